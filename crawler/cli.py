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
from crawler.export_cli import add_export_command, cmd_export
from crawler.hashlist_cli import add_hashlist_commands, cmd_hashlist
from crawler.report.cli import add_report_command, cmd_report

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
    crawl.add_argument("snapshots", nargs="*", metavar="SNAPSHOT",
                       help="Parquet/CSV/TSV/JSONL URL table (optionally .gz), WAT or WARC file "
                            "(with --recheck: default, the re-checked run's snapshot)")
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
    _add_queue_options(drain)
    drain.add_argument("--max", type=_positive(int), default=None,
                       help="stop once N events are handled (batches are never split: up to one batch more)")
    drain.add_argument("--lease", type=_positive(float), default=None, metavar="SECONDS",
                       help="how long a received batch is ours before it is delivered again (default 300)")
    stats = queue_commands.add_parser("stats", help="count pending, in-flight, acknowledged and malformed events")
    _add_queue_options(stats)

    add_hashlist_commands(commands)
    add_export_command(commands)
    add_report_command(commands)
    demo = commands.add_parser("demo", help="a self-contained demo on a sample web on loopback")
    demo.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    return parser


def _add_s3_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--s3-endpoint-url", default=None, metavar="URL",
                   help="S3-compatible endpoint (default: boto3's, e.g. AWS_ENDPOINT_URL, else AWS)")
    p.add_argument("--sse", choices=["AES256", "aws:kms"], default=None, help="server-side encryption of S3 writes")
    p.add_argument("--sse-kms-key-id", default=None, metavar="KEY", help="KMS key for --sse aws:kms")


def _add_queue_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--queue", default=None,
                   help=f"queue URL: file://DIR or s3://BUCKET/PREFIX (default file://{DEFAULT_OUT}/queue)")
    p.add_argument("--json", action="store_true", help="JSON output")
    _add_s3_options(p)


def _positive(kind: type[int | float]) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number: {text!r}")
        return value

    return parse


def _groups(text: str) -> list[str]:
    from crawler.outcomes import OUTCOME_GROUPS

    groups = [g.strip() for g in text.split(",") if g.strip()]
    unknown = [g for g in groups if g not in OUTCOME_GROUPS]
    if unknown or not groups:
        raise argparse.ArgumentTypeError(f"expected groups among {', '.join(OUTCOME_GROUPS)}: {text!r}")
    return groups


def _setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier() or name.upper() != name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE with an upper-case setting NAME: {text!r}")
    return name, value


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
    p.add_argument("--queue", default=None,
                   help="event queue URL: file://DIR or s3://BUCKET/PREFIX (default file://OUT/queue)")
    _add_s3_options(p)
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
    p.add_argument("--recheck", default=None, metavar="RUN",
                   help="replay only some references of the earlier run RUN (in --out); the rest are carried over")
    p.add_argument("--only", type=_groups, default=None, metavar="GROUP[,GROUP]",
                   help="with --recheck: dead, failed, placeholder (default failed)")
    p.add_argument("--placeholders", default=None, metavar="FILE",
                   help="your known placeholder pictures (kind,value lines), beside the shipped list")
    p.add_argument("--metrics-textfile", default=None, metavar="PATH",
                   help="at the end, write the run's gauges for node_exporter's textfile collector (*.prom)")
    p.add_argument("--pushgateway", default=None, metavar="URL",
                   help="at the end, push the run's gauges to this Prometheus Pushgateway")
    p.add_argument("-s", "--set", action="append", type=_setting, default=[], metavar="NAME=VALUE",
                   help="set any setting, as scrapy crawl -s does (e.g. REFWATCH_QUEUE_BATCH_EVENTS=100)")


def crawl_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Options → settings. Only the options given are set; every default lives in crawler.settings."""
    out: dict[str, Any] = dict(args.set)
    out |= {
        "REFWATCH_SNAPSHOTS": list(args.snapshots),
        "REFWATCH_HASHLISTS": list(args.hashlist),
        "REFWATCH_OUT": args.out,
    }
    optional = {
        "REFWATCH_HASHLIST_ALGORITHM": args.hashlist_algorithm,
        "REFWATCH_QUEUE": args.queue,
        "REFWATCH_S3_ENDPOINT_URL": args.s3_endpoint_url,
        "REFWATCH_S3_SSE": args.sse,
        "REFWATCH_S3_SSE_KMS_KEY_ID": args.sse_kms_key_id,
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
        "REFWATCH_RECHECK_RUN": args.recheck,
        "REFWATCH_RECHECK_ONLY": args.only,
        "REFWATCH_PLACEHOLDERS": args.placeholders,
        "REFWATCH_METRICS_TEXTFILE": args.metrics_textfile,
        "REFWATCH_PUSHGATEWAY": args.pushgateway,
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
    if summary.get("queue_errors"):
        console.print(f"  {summary['queue_errors']} queue writes failed and were retried")
    if summary.get("outputs_failed"):
        console.print(f"[bold red]the run's outputs could not all be written[/] (see the log): redo the run with "
                      f"--run-id {summary['run_id']}")
    if summary.get("events_unwritten"):
        console.print(f"[bold red]{summary['events_unwritten']} events could not be written to the queue[/]: "
                      f"redo the run with --run-id {summary['run_id']} to publish them")
    for list_name, by_algorithm in summary["matches"].items():
        parts = ", ".join(f"{algorithm} {count}" for algorithm, count in by_algorithm.items())
        console.print(f"  list {list_name}: {parts}")
    console.print(f"outcomes: {run_dir}/outcomes/  summary: {run_dir}/summary.json")


def cmd_crawl(args: argparse.Namespace) -> int:
    from crawler.runner import project_settings, run_crawl

    from crawler.batchmetrics import check_targets, export_run_metrics
    from crawler.history import read_manifest

    if args.only and not args.recheck:
        raise _BadInput("--only goes with --recheck RUN")
    settings = project_settings(crawl_settings(args))
    try:
        check_targets(settings.get("REFWATCH_METRICS_TEXTFILE"), settings.get("REFWATCH_PUSHGATEWAY"))
    except ValueError as exc:
        raise _BadInput(str(exc)) from None
    result = run_crawl(settings)
    if args.json:
        print(json.dumps(result.summary, indent=2))
    else:
        print_summary(result.summary, result.run_location or result.run_dir, result.queue_url)
    ok = (result.summary.get("finish_reason") == "finished" and not result.summary.get("events_unwritten")
          and not result.summary.get("outputs_failed"))
    try:
        manifest = read_manifest(Path(result.run_dir))
    except ValueError:
        manifest = None
    problems = export_run_metrics(settings, result.summary, manifest)  # failures are logged there
    return EXIT_OK if ok and not problems else EXIT_FAILED


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
    """Bad URL or options, or a queue that cannot be reached at all: exit 2; a failure while draining: exit 1."""
    from crawler.eventqueue import DEFAULT_LEASE_SECONDS, open_queue
    from crawler.objectstore import StoreError

    queue = open_queue(_queue_url(args.queue), endpoint_url=args.s3_endpoint_url, sse=args.sse,
                       sse_kms_key_id=args.sse_kms_key_id)
    queue.check()
    try:
        if args.queue_command == "stats":
            _print_stats(queue.stats(), args.json)
        else:
            _drain(queue, args.max, args.lease or DEFAULT_LEASE_SECONDS, args.json)
    except StoreError as exc:
        print(f"refwatch: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        queue.close()
    return EXIT_OK


def _print_stats(stats: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(stats.as_dict()))
        return
    age = stats.oldest_pending_age_seconds
    print(f"pending       {stats.pending} events\n"
          f"in flight     {stats.in_flight} events\n"
          f"acknowledged  {stats.acknowledged} events\n"
          f"malformed     {stats.malformed} objects\n"
          f"oldest        {'-' if age is None else f'{age:.1f} s'}")


def _drain(queue: Any, limit: int | None, lease: float, as_json: bool) -> None:
    handled = 0
    while limit is None or handled < limit:
        batch = queue.receive(1000 if limit is None else min(limit - handled, 1000), lease)
        if not batch.events:
            break
        for event in batch.events:
            if as_json:
                print(event.to_json())
            else:
                print(f"{event.detected_at} {event.list_name} {event.algorithm} d={event.distance} "
                      f"run={event.run_id} ref={event.ref_id} {event.url}")
        sys.stdout.flush()  # printed before acknowledged: at-least-once, never at-most-once
        queue.ack(batch)
        handled += len(batch.events)


def cmd_demo(args: argparse.Namespace) -> int:
    from crawler.demo import run_demo

    return run_demo(args.out)


class _BadInput(Exception):
    pass


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from crawler.eventqueue import QueueError
    from crawler.hashlist import HashListError
    from crawler.objectstore import StoreError
    from crawler.references import SnapshotError
    from crawler.runner import InputError

    handlers = {"crawl": cmd_crawl, "refs": cmd_refs, "hash": cmd_hash, "queue": cmd_queue, "demo": cmd_demo}
    handlers["hashlist"] = cmd_hashlist
    handlers["export-clean"] = cmd_export
    handlers["report"] = cmd_report
    try:
        return handlers[args.command](args)
    except (InputError, SnapshotError, HashListError, QueueError, StoreError, _BadInput) as exc:
        print(f"refwatch: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        return EXIT_OK
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
