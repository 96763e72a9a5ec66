"""``refwatch refs`` and ``refwatch hash``: look at a snapshot's references, or hash local images, without crawling.

``refwatch hash`` runs the crawl's own hashing (``crawler.hashing.digest``), so a hash list built from its
output matches what a crawl computes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from crawler.cli.common import EXIT_OK, BadInput


def add_input_commands(commands: Any) -> None:
    """Add ``refs`` and ``hash`` to the ``refwatch`` sub-command parsers."""
    refs = commands.add_parser("refs", help="list the references snapshots yield, without fetching")
    refs.add_argument("snapshots", nargs="+", metavar="SNAPSHOT")
    refs.add_argument("--json", action="store_true", help="JSON Lines instead of tab-separated text")
    refs.add_argument("--limit", type=int, default=None, help="stop after N references")
    refs.add_argument("--s3-endpoint-url", default=None, metavar="URL",
                      help="S3-compatible endpoint for s3:// snapshots (default: boto3's, e.g. AWS_ENDPOINT_URL)")

    hash_ = commands.add_parser("hash", help="hash local image files as the crawl does")
    hash_.add_argument("files", nargs="+", metavar="FILE")
    hash_.add_argument("--json", action="store_true", help="JSON Lines")
    hash_.add_argument("--hashlist-out", metavar="FILE", help="also write a hash-list CSV of these images")
    hash_.add_argument("--label", default=None, help="label for the --hashlist-out entries")
    hash_.add_argument("--hashes", default=None, metavar="ALGO[,ALGO]",
                       help="what to compute: md5, sha1, sha256, phash, dhash, pdq (default all)")


def cmd_refs(args: argparse.Namespace) -> int:
    from crawler.readers import iter_references
    from crawler.storage.inputs import configure_inputs

    count = 0
    # s3:// snapshots: Parquet by ranged reads, other formats through the input cache (REFWATCH_INPUT_CACHE)
    remote = configure_inputs(args.s3_endpoint_url).snapshots()
    for ref in iter_references(args.snapshots, remote=remote):
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
    from crawler.hashing.digest import ALGORITHMS, hash_file, parse_algorithms

    try:
        algorithms = parse_algorithms(args.hashes.split(",")) if args.hashes else ALGORITHMS
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    rows = []
    for name in args.files:
        path = Path(name)
        if not path.is_file():
            raise BadInput(f"{name}: no such file")
        d = hash_file(path, algorithms=algorithms)
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
