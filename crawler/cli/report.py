"""``refwatch report``: attrition over a series of runs, as terminal tables, a JSON file and an HTML page.

``crawler/cli/main.py`` wires it in with ``add_report_command(subparsers)`` and ``cmd_report(args)``; it also runs
on its own (``python -m crawler.cli.report --out DIR``). Like the rest of the CLI it only translates options
and writes what the package computed. Bad input (no runs, an unknown series, an unreadable part, an output
file that cannot be written) is one line naming the file and exit status 2; notes about runs left out go to
standard error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crawler.cli.common import DEFAULT_OUT, EXIT_BAD_INPUT, EXIT_OK


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number: {text!r}")
    return int(text)


def _run_ids(text: str) -> list[str]:
    ids = [part.strip() for part in text.split(",") if part.strip()]
    if not ids:
        raise argparse.ArgumentTypeError("expected run ids separated by commas")
    return ids


def add_report_command(subparsers: Any) -> None:
    """Add ``report`` to the ``refwatch`` sub-command parsers."""
    report = subparsers.add_parser("report", help="attrition over a series of runs: tables, JSON, an HTML page")
    _add_report_options(report, DEFAULT_OUT)


def _add_report_options(p: argparse.ArgumentParser, default_out: str) -> None:
    p.add_argument("--out", default=default_out,
                   help=f"the crawls' output folder, or s3://BUCKET/PREFIX (default {default_out})")
    p.add_argument("--s3-endpoint-url", default=None, metavar="URL", help="S3-compatible endpoint for an s3:// --out")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--series", default=None, help="report this series (default: the newest finished run's)")
    which.add_argument("--runs", type=_run_ids, default=None, metavar="A,B,...",
                       help="report these runs (of one series), ordered by start time")
    p.add_argument("--json", metavar="FILE", help="write every number as JSON ('-': standard output, no tables)")
    p.add_argument("--html", metavar="FILE", help="write a self-contained HTML page with plots and tables")
    p.add_argument("--top-domains", type=_positive_int, default=10, metavar="N",
                   help="domains listed per transition and in the losses (default 10)")
    p.add_argument("--min-domain-refs", type=_positive_int, default=20, metavar="N",
                   help="references a domain needs in the first run to be ranked by loss (default 20)")


def cmd_report(args: argparse.Namespace) -> int:
    """Run ``refwatch report``; returns the exit status."""
    # imported here: `refwatch` builds this command's parser for every command, and these load pyarrow/duckdb
    from crawler.report.metrics import build_report
    from crawler.report.selection import ReportError, load_selection
    from crawler.report.tables import history_database

    from crawler.storage.base import StoreError
    from crawler.storage.remote import local_copy

    try:
        out = local_copy(args.out, "runs/", endpoint_url=args.s3_endpoint_url)  # an s3:// output: synced down
    except StoreError as exc:
        print(f"refwatch: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        selection = load_selection(out, series=args.series, run_ids=args.runs)
        with history_database(selection) as con:
            report = build_report(con, selection, top_domains=args.top_domains,
                                  min_domain_references=args.min_domain_refs)
        for note in report.notes:
            print(f"refwatch: note: {note}", file=sys.stderr)
        if args.json:
            _write(args.json, json.dumps(report.as_dict(), indent=2, allow_nan=False) + "\n")
        if args.html:
            from crawler.report.html import render_html

            _write(args.html, render_html(report))
    except ReportError as exc:
        print(f"refwatch: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json != "-":
        _print_tables(report)
    return EXIT_OK


def _write(target: str, text: str) -> None:
    """Write ``text`` to ``target`` whole (temporary name, then renamed), or to stdout for ``-``."""
    from crawler.report.selection import ReportError

    if target == "-":
        sys.stdout.write(text)
        return
    path = Path(target)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise ReportError(f"{path}: cannot write ({exc.strerror or type(exc).__name__})") from None


def _print_tables(report: Any) -> None:
    from rich.console import Console

    from crawler.report.text import render_text, text_width

    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = text_width(report)
    render_text(report, console)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m crawler.cli.report``: the same command without the rest of ``refwatch``."""
    parser = argparse.ArgumentParser(prog="refwatch report", description=__doc__.splitlines()[0])
    _add_report_options(parser, DEFAULT_OUT)
    try:
        return cmd_report(parser.parse_args(argv))
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
