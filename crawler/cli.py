"""The ``refwatch`` command line: it only translates options into settings and prints results.

Exit status: 0 done; 1 the run failed; 2 bad input (a missing or malformed snapshot, hash list or queue
URL), reported as one line naming the file, line or record, with nothing written.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crawler import __version__
from crawler.hashlist_cli import add_hashlist_commands, cmd_hashlist

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
DEFAULT_OUT = "./refwatch-data"


def _radius(text: str) -> tuple[str, int]:
    algorithm, _, number = text.partition("=")
    if algorithm not in ("phash", "dhash", "pdq") or not number.isdigit():
        raise argparse.ArgumentTypeError(f"expected ALGO=N with ALGO one of phash, dhash, pdq: {text!r}")
    return algorithm, int(number)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refwatch", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"refwatch {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    crawl = commands.add_parser("crawl", help="replay snapshots: fetch, hash in memory, classify, match")
    crawl.add_argument("snapshots", nargs="+", metavar="SNAPSHOT",
                       help="Parquet/CSV/TSV/JSONL URL table (optionally .gz), WAT or WARC file")
    _add_crawl_options(crawl)

    refs = commands.add_parser("refs", help="list the references snapshots yield, without fetching")
    refs.add_argument("snapshots", nargs="+", metavar="SNAPSHOT")
    refs.add_argument("--json", action="store_true", help="JSON Lines instead of tab-separated text")
    refs.add_argument("--limit", type=int, default=None, help="stop after N references")

    hash_ = commands.add_parser("hash", help="hash local image files as the crawl does")
    hash_.add_argument("files", nargs="+", metavar="FILE")
    hash_.add_argument("--json", action="store_true", help="JSON Lines")
    hash_.add_argument("--hashlist-out", metavar="FILE", help="also write a hash-list CSV of these images")
    hash_.add_argument("--label", default=None, help="label for the --hashlist-out entries")

    queue = commands.add_parser("queue", help="read the match-event queue")
    queue_commands = queue.add_subparsers(dest="queue_command", required=True, metavar="QUEUE_COMMAND")
    drain = queue_commands.add_parser("drain", help="print each pending event and acknowledge it")
    drain.add_argument("--queue", default=None, help=f"queue URL (default file://{DEFAULT_OUT}/queue)")
    drain.add_argument("--json", action="store_true", help="one JSON object a line")
    drain.add_argument("--max", type=int, default=None, help="stop after N events")
    stats = queue_commands.add_parser("stats", help="count pending, acknowledged and malformed events")
    stats.add_argument("--queue", default=None)

    add_hashlist_commands(commands)
    demo = commands.add_parser("demo", help="a self-contained demo on a sample web on loopback")
    demo.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    return parser


def _add_crawl_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hashlist", action="append", default=[], metavar="[NAME=]PATH",
                   help="hash list to match against (repeatable): CSV algorithm,hash[,id][,label] or text")
    p.add_argument("--hashlist-algorithm", choices=["md5", "sha1", "sha256", "phash", "dhash", "pdq"],
                   help="algorithm of plain-text hash lists (one hex hash a line)")
    p.add_argument("--skip-bad-lines", action="store_true",
                   help="skip and count malformed hash-list lines instead of stopping (exit 2)")
    p.add_argument("--radius", action="append", type=_radius, default=[], metavar="ALGO=N",
                   help="Hamming radius for phash/dhash/pdq (defaults phash=8 dhash=6 pdq=31)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--queue", default=None, help="event queue URL (default file://OUT/queue)")
    p.add_argument("--run-id", default=None, help="run id (default: start time); the same id redoes a run")
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port")
    p.add_argument("--metrics-address", default=None, help="address /metrics listens on (default 0.0.0.0)")
    p.add_argument("--concurrency", type=int, default=None, help="requests in flight (default 64)")
    p.add_argument("--per-host", type=int, default=None, help="requests in flight per host (default 8)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per download (default 30)")
    p.add_argument("--retries", type=int, default=None, help="retries of transient failures (default 2)")
    p.add_argument("--max-bytes", type=int, default=None, help="larger bodies are too_large (default 50 MiB)")
    p.add_argument("--max-pixels", type=int, default=None, help="larger images are decode_error (default 64M)")
    p.add_argument("--user-agent", default=None, help="User-Agent; name refwatch and a contact URL")
    p.add_argument("--pdq-dihedral", action="store_true",
                   help="also match PDQ of each image's rotations and flips (about +6 ms an image)")
    p.add_argument("--obey-robots", action="store_true", help="consult robots.txt (robots_blocked)")
    p.add_argument("--allow-private-networks", action="store_true",
                   help="allow loopback/private/link-local addresses (demo and tests)")
    p.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING, ERROR")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")


def crawl_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Options → settings. Only the options given are set; every default lives in crawler.settings."""
    out: dict[str, Any] = {
        "REFWATCH_SNAPSHOTS": list(args.snapshots),
        "REFWATCH_HASHLISTS": list(args.hashlist),
        "REFWATCH_OUT": args.out,
    }
    optional = {
        "REFWATCH_HASHLIST_ALGORITHM": args.hashlist_algorithm,
        "REFWATCH_QUEUE": args.queue,
        "REFWATCH_RUN_ID": args.run_id,
        "REFWATCH_METRICS_PORT": args.metrics_port,
        "REFWATCH_METRICS_ADDRESS": args.metrics_address,
        "CONCURRENT_REQUESTS": args.concurrency,
        "CONCURRENT_REQUESTS_PER_DOMAIN": args.per_host,
        "DOWNLOAD_TIMEOUT": args.timeout,
        "RETRY_TIMES": args.retries,
        "DOWNLOAD_MAXSIZE": args.max_bytes,
        "REFWATCH_MAX_PIXELS": args.max_pixels,
        "USER_AGENT": args.user_agent,
        "LOG_LEVEL": args.log_level,
    }
    out.update({k: v for k, v in optional.items() if v is not None})
    if args.radius:
        from crawler.settings import REFWATCH_RADII

        out["REFWATCH_RADII"] = {**REFWATCH_RADII, **dict(args.radius)}
    if args.skip_bad_lines:
        out["REFWATCH_HASHLIST_SKIP_BAD_LINES"] = True
    if args.pdq_dihedral:
        out["REFWATCH_PDQ_DIHEDRAL"] = True
    if args.obey_robots:
        out["ROBOTSTXT_OBEY"] = True
    if args.allow_private_networks:
        out["REFWATCH_ALLOW_PRIVATE_NETWORKS"] = True
    if sys.stderr.isatty() and not args.no_progress and not args.json:
        out["REFWATCH_PROGRESS"] = True
        out.setdefault("LOG_LEVEL", "WARNING")  # log lines would tear the progress bar
    return out


def print_summary(summary: dict[str, Any], run_dir: str, queue_url: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"refwatch run {summary['run_id']}", show_edge=False)
    table.add_column("outcome")
    table.add_column("references", justify="right")
    table.add_column("share", justify="right")
    total = summary["references"] or 1
    for outcome, count in summary["outcomes"].items():
        if count:
            table.add_row(outcome, str(count), f"{100.0 * count / total:.1f}%")
    table.add_row("[bold]total[/]", f"[bold]{summary['references']}[/]", "")
    console.print(table)
    console.print(f"{summary['refs_per_second']:.1f} refs/s over {summary['seconds']:.1f} s; "
                  f"{summary['matched_references']} matched references, {summary['events_published']} events "
                  f"published to {queue_url}")
    for list_name, by_algorithm in summary["matches"].items():
        parts = ", ".join(f"{algorithm} {count}" for algorithm, count in by_algorithm.items())
        console.print(f"  list {list_name}: {parts}")
    console.print(f"outcomes: {run_dir}/outcomes/  summary: {run_dir}/summary.json")


def cmd_crawl(args: argparse.Namespace) -> int:
    from crawler.runner import project_settings, run_crawl

    result = run_crawl(project_settings(crawl_settings(args)))
    if args.json:
        print(json.dumps(result.summary, indent=2))
    else:
        print_summary(result.summary, result.run_dir, result.queue_url)
    return EXIT_OK if result.summary.get("finish_reason") == "finished" else EXIT_FAILED


def cmd_refs(args: argparse.Namespace) -> int:
    from crawler.readers import iter_references

    count = 0
    for ref in iter_references(args.snapshots):
        if args.limit is not None and count >= args.limit:
            break
        count += 1
        if args.json:
            print(json.dumps({"ref_id": ref.ref_id, "url": ref.url, "page_url": ref.page_url, "alt": ref.alt},
                             ensure_ascii=False))
        else:
            print("\t".join(_cell(v) for v in (ref.ref_id, ref.url, ref.page_url, ref.alt)))
    return EXIT_OK


def _cell(value: str | None) -> str:
    return "" if value is None else value.replace("\t", " ").replace("\n", " ")


def cmd_hash(args: argparse.Namespace) -> int:
    from crawler.hashing import hash_file

    rows = []
    for name in args.files:
        path = Path(name)
        if not path.is_file():
            raise _BadInput(f"{name}: no such file")
        d = hash_file(path)
        row = {"file": name, "bytes": d.size, "md5": d.md5, "sha1": d.sha1, "sha256": d.sha256, "phash": d.phash,
               "dhash": d.dhash, "pdq": d.pdq, "pdq_quality": d.pdq_quality, "width": d.width, "height": d.height}
        if d.decode_error:
            row["error"] = d.decode_error
        rows.append(row)
        if args.json:
            print(json.dumps(row))
        else:
            print("\t".join(str(row[k]) if row[k] is not None else "-" for k in
                            ("file", "md5", "sha256", "phash", "dhash", "pdq", "pdq_quality", "width", "height")))
    if args.hashlist_out:
        _write_hashlist(Path(args.hashlist_out), rows, args.label)
    return EXIT_OK


def _write_hashlist(path: Path, rows: list[dict[str, Any]], label: str | None) -> None:
    import csv
    import io
    import os

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["algorithm", "hash", "id", "label"])
    for row in rows:
        for algorithm in ("md5", "sha256", "phash", "dhash", "pdq"):
            if row[algorithm] is not None:
                writer.writerow([algorithm, row[algorithm], Path(row["file"]).name, label or ""])
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(buffer.getvalue(), encoding="utf-8")
    os.replace(tmp, path)


def _queue_url(given: str | None) -> str:
    return given or f"file://{Path(DEFAULT_OUT, 'queue').resolve()}"


def cmd_queue(args: argparse.Namespace) -> int:
    from crawler.eventqueue import open_queue

    queue = open_queue(_queue_url(args.queue))
    try:
        if args.queue_command == "stats":
            s = queue.stats()
            print(json.dumps({"pending": s.pending, "acknowledged": s.acknowledged, "malformed": s.malformed}))
            return EXIT_OK
        remaining = args.max
        while remaining is None or remaining > 0:
            batch = queue.receive(1000 if remaining is None else min(remaining, 1000))
            if not batch.events:
                break
            for event in batch.events:
                if args.json:
                    print(event.to_json())
                else:
                    print(f"{event.detected_at} {event.list_name} {event.algorithm} d={event.distance} "
                          f"run={event.run_id} ref={event.ref_id} {event.url}")
            sys.stdout.flush()  # printed before acknowledged: at-least-once, never at-most-once
            queue.ack(batch)
            if remaining is not None:
                remaining -= len(batch.events)
    finally:
        queue.close()
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from crawler.demo import run_demo

    return run_demo(args.out)


class _BadInput(Exception):
    pass


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from crawler.eventqueue import QueueError
    from crawler.hashlist import HashListError
    from crawler.references import SnapshotError
    from crawler.runner import InputError

    handlers = {"crawl": cmd_crawl, "refs": cmd_refs, "hash": cmd_hash, "queue": cmd_queue, "demo": cmd_demo}
    handlers["hashlist"] = cmd_hashlist
    try:
        return handlers[args.command](args)
    except (InputError, SnapshotError, HashListError, QueueError, _BadInput) as exc:
        print(f"refwatch: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        return EXIT_OK
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
