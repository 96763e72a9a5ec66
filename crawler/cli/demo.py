"""``refwatch demo``: the whole job on a sample web on loopback, with no network and nothing to set up.

It starts the sample web (synthetic, benign images), writes a small snapshot with live, dead and broken
references and a hash list holding the hashes of one sample image, replays the snapshot, prints the
summary and the match events of the run, and stops everything.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crawler.cli.common import DEFAULT_OUT, EXIT_OK
from crawler.cli.crawl import print_summary

if TYPE_CHECKING:  # the sample web (Pillow, numpy) is imported only when the demo runs, not by every command
    from crawler.sample.web import SampleWeb

LISTED_SEED = 3  # the sample image whose hashes are on the demo's hash list


def add_demo_command(commands: Any) -> None:
    """Add ``demo`` to the ``refwatch`` sub-command parsers."""
    demo = commands.add_parser("demo", help="a self-contained demo on a sample web on loopback")
    demo.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(args.out)


def demo_references(web: SampleWeb) -> list[tuple[str, str]]:
    """(url, caption) rows of the demo snapshot: something of every common kind."""
    rows = [(web.url(f"/img/{seed}.jpg"), f"sample picture {seed}") for seed in range(1, 9)]
    rows += [
        (web.url("/img/9.png"), "a png"),
        (web.url("/img/10.webp"), "a webp"),
        (web.url(f"/variant/{LISTED_SEED}/resized.jpg"), "a resized copy of a listed picture"),
        (web.url(f"/variant/{LISTED_SEED}/jpeg_q50.jpg"), "a recompressed copy of a listed picture"),
        (web.url("/redirect/2?to=/img/4.jpg"), "moved twice"),
        (web.url("/xrobots/5.jpg"), "opted out of AI datasets"),
        (web.url("/status/404"), "gone missing"),
        (web.url("/status/410"), "removed"),
        (web.url("/status/403"), "forbidden"),
        (web.url("/status/500"), "server error"),
        (web.url("/page.html"), "an HTML page, not an image"),
        (web.url("/garbage.jpg"), "claims to be a JPEG"),
        ("not a url", "a malformed reference"),
    ]
    return rows


def write_demo_inputs(web: SampleWeb, folder: Path) -> tuple[Path, Path]:
    from crawler.hashing.digest import hash_bytes

    snapshot = folder / "demo-snapshot.csv"
    with snapshot.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["url", "caption"])
        writer.writerows(demo_references(web))
    digest = hash_bytes(web.image_bytes(LISTED_SEED))
    hashlist = folder / "demo-hashlist.csv"
    with hashlist.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["algorithm", "hash", "id", "label"])
        writer.writerow(["md5", digest.md5, "demo-1", "synthetic demo image"])
        writer.writerow(["phash", digest.phash, "demo-1", "synthetic demo image"])
        writer.writerow(["pdq", digest.pdq, "demo-1", "synthetic demo image"])
    return snapshot, hashlist


def run_demo(out: str) -> int:
    from crawler.events.queue import open_queue
    from crawler.runner import project_settings, run_crawl

    from crawler.sample.web import SampleWeb

    with SampleWeb() as web, tempfile.TemporaryDirectory(prefix="refwatch-demo-") as tmp:
        snapshot, hashlist = write_demo_inputs(web, Path(tmp))
        print(f"sample web at {web.base_url}; replaying {snapshot.name} against {hashlist.name}\n")
        settings = project_settings({
            "REFWATCH_SNAPSHOTS": [str(snapshot)],
            "REFWATCH_HASHLISTS": [f"demo={hashlist}"],
            "REFWATCH_OUT": out,
            "REFWATCH_ALLOW_PRIVATE_NETWORKS": True,
            "DOWNLOAD_TIMEOUT": 10,
            "LOG_LEVEL": "WARNING",
        })
        result = run_crawl(settings)
    print_summary(result.summary, result.run_dir, result.queue_url)
    queue = open_queue(result.queue_url)
    try:
        events = [e for e in queue.peek(10_000) if e.run_id == result.summary["run_id"]]
    finally:
        queue.close()
    print(f"\nmatch events of this run ({len(events)}; `refwatch queue drain --json` prints and acknowledges them):")
    for event in events:
        print(json.dumps(json.loads(event.to_json()), indent=None))
    return EXIT_OK
