"""``refwatch export-clean``: the command-line half of ``crawler.export.clean`` (options in, counts out).

``crawler/cli/main.py`` wires it in with ``add_export_command(subparsers)`` and ``cmd_export(args)``. Bad input
(a missing run, a snapshot the run did not replay, an unknown ``--drop`` word, an existing output without
``--force``, a WARC/WAT snapshot) is reported here as one ``refwatch: error:`` line naming the file, with
exit status 2 and nothing written, so the command behaves the same however it is wired; a failing disk is
one line too, with status 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from crawler.cli.common import DEFAULT_OUT, EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK


def add_export_command(subparsers: Any) -> None:
    """Add ``export-clean`` to the ``refwatch`` sub-command parsers."""
    p = subparsers.add_parser("export-clean", help="write a snapshot minus the references a run says to drop")
    p.add_argument("snapshot", metavar="SNAPSHOT",
                   help="the Parquet/CSV/TSV/JSONL snapshot (optionally .gz) the run replayed")
    p.add_argument("--run", required=True, metavar="RUN", help="id of a finished run of that snapshot")
    p.add_argument("--drop", required=True, metavar="REASONS",
                   help="comma-separated: matched (live or recorded hashes), dead, failed, placeholder, opted_out")
    p.add_argument("--out", required=True, metavar="FILE", help="the cleaned snapshot (same format as SNAPSHOT)")
    p.add_argument("--runs-dir", default=DEFAULT_OUT, metavar="OUT",
                   help=f"the crawl's output folder holding runs/, or s3://BUCKET/PREFIX (default {DEFAULT_OUT})")
    p.add_argument("--s3-endpoint-url", default=None, metavar="URL", help="S3-compatible endpoint for s3:// --runs-dir")
    p.add_argument("--opt-out", metavar="FILE", default=None,
                   help="URLs and domains to drop with --drop opted_out: one a line, # comments")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")


def cmd_export(args: argparse.Namespace) -> int:
    """Run ``refwatch export-clean``; returns the exit status (bad input: one line on stderr, status 2)."""
    from crawler.export.clean import export_clean
    from crawler.export.verdicts import ExportError

    from crawler.storage.base import StoreError
    from crawler.storage.remote import local_copy

    try:
        run_dir = local_copy(args.runs_dir, f"runs/{args.run}/", endpoint_url=args.s3_endpoint_url) / "runs" / args.run
    except StoreError as exc:
        print(f"refwatch: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        result = export_clean(args.snapshot, run_dir, args.out, args.drop.split(","), opt_out=args.opt_out,
                              force=args.force)
    except ExportError as exc:
        print(f"refwatch: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # the disk, not the input: full, read-only, a directory where FILE should be
        print(f"refwatch: error: {exc.filename or args.out}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    dropped = sum(result.dropped.values())
    print(f"wrote {result.output} ({result.format}): {result.kept:,} of {result.references:,} references kept, "
          f"{dropped:,} dropped")
    for reason, count in result.dropped.items():
        print(f"  dropped {reason:<12} {count:>12,}")
    print(f"  kept, not in run {result.not_in_run:>12,}")
    if result.unreadable:
        print(f"  unreadable records copied as they were (not references): {result.unreadable:,}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m crawler.cli.export export-clean ...``: the command on its own, without the rest of ``refwatch``."""
    parser = argparse.ArgumentParser(prog="refwatch")
    add_export_command(parser.add_subparsers(dest="command", required=True))
    return cmd_export(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
