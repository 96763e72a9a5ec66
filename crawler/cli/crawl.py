"""``refwatch crawl``: options in, settings out, a crawl run, its summary printed.

The options only translate into settings (every default lives in ``crawler.settings``); the crawl itself is
``crawler.runner.run_crawl``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from crawler.cli.common import DEFAULT_OUT, EXIT_FAILED, EXIT_OK, BadInput, add_s3_options, positive, radius


def add_crawl_command(commands: Any) -> None:
    """Add ``crawl`` to the ``refwatch`` sub-command parsers."""
    crawl = commands.add_parser("crawl", help="replay snapshots: fetch, hash in memory, classify, match")
    crawl.add_argument("snapshots", nargs="*", metavar="SNAPSHOT",
                       help="Parquet/CSV/TSV/JSONL URL table (optionally .gz), WAT or WARC file "
                            "(with --recheck: default, the re-checked run's snapshot)")
    add_crawl_options(crawl)
    crawl.add_argument("--processes", type=positive(int), default=None, metavar="N",
                       help="crawl processes on this machine (default: one per core); a Parquet snapshot is cut "
                            "into shards of --shard-size rows, other files are one shard each")
    crawl.add_argument("--shard-size", type=positive(int), default=None, metavar="ROWS",
                       help="references per shard of a Parquet snapshot (default 20000)")
    # A child of --processes: crawl one shard of a planned run and commit it (crawler/workers/local.py).
    shard = commands.add_parser("_shard")
    shard.add_argument("spec", type=Path)


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
def add_crawl_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hashlist", action="append", default=[], metavar="[NAME=]PATH",
                   help="hash list to match against (repeatable): CSV algorithm,hash[,id][,label] or text")
    p.add_argument("--hashlist-algorithm", choices=["md5", "sha1", "sha256", "phash", "dhash", "pdq"],
                   help="algorithm of plain-text hash lists (one hex hash a line)")
    p.add_argument("--skip-bad-lines", action="store_true",
                   help="skip and count malformed hash-list lines instead of stopping (exit 2)")
    p.add_argument("--radius", action="append", type=radius, default=[], metavar="ALGO=N",
                   help="Hamming radius for phash/dhash/pdq (defaults phash=8 dhash=6 pdq=31)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--queue", default=None,
                   help="event queue URL: file://DIR or s3://BUCKET/PREFIX (default file://OUT/queue)")
    add_s3_options(p)
    p.add_argument("--run-id", default=None, help="run id (default: start time); the same id redoes a run")
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port")
    p.add_argument("--metrics-address", default=None, help="address /metrics listens on (default 0.0.0.0)")
    p.add_argument("--concurrency", type=int, default=None, help="requests in flight (default 64)")
    p.add_argument("--per-host", type=int, default=None, help="requests in flight per host (default 8)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per download (default 30)")
    p.add_argument("--retries", type=int, default=None, help="retries of transient failures (default 2)")
    p.add_argument("--max-bytes", type=int, default=None, help="larger bodies are too_large (default 50 MiB)")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="larger images are decode_error (default 48M; fewer for heavy formats, e.g. RGBA WebP)")
    p.add_argument("--user-agent", default=None, help="User-Agent; name refwatch and a contact URL")
    p.add_argument("--hashes", default=None, metavar="ALGO[,ALGO]",
                   help="what to compute of each body: md5, sha1, sha256, phash, dhash, pdq (default all)")
    p.add_argument("--pdq-dihedral", action="store_true",
                   help="also match PDQ of each image's rotations and flips (from the same DCT: nearly free)")
    p.add_argument("--obey-robots", action="store_true", help="consult robots.txt (robots_blocked)")
    p.add_argument("--allow-private-networks", action="store_true",
                   help="allow loopback/private/link-local addresses (demo and tests)")
    p.add_argument("--allow-network", action="append", default=[], metavar="CIDR",
                   help="also fetch addresses in this network though it is not public, e.g. 10.20.0.0/16 or "
                        "fd00::/8 (repeatable); every other non-public address stays blocked_address")
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
        "REFWATCH_HASHES": args.hashes.split(",") if args.hashes else None,
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
    if args.allow_network or "REFWATCH_ALLOW_NETWORKS" in out:  # checked now: a bad one is one line, exit 2
        from crawler.addresses import parse_networks

        given = args.allow_network or out["REFWATCH_ALLOW_NETWORKS"].split(",")  # -s: comma-separated
        try:
            out["REFWATCH_ALLOW_NETWORKS"] = parse_networks(text for text in given if text.strip())
        except ValueError as exc:
            raise BadInput(f"{'--allow-network' if args.allow_network else 'REFWATCH_ALLOW_NETWORKS'} {exc}") from None
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
    if args.only and not args.recheck:
        raise BadInput("--only goes with --recheck RUN")
    with contextlib.ExitStack() as stack:
        # The shard children's zygote imports the crawl stack (~2.5 s of CPU) on another core while this
        # process imports Scrapy and plans: started before both when the plan will have several shards.
        early_starter = stack.enter_context(early_shard_starter(args)) if will_shard(args) else None
        return _crawl(args, early_starter)


def will_shard(args: argparse.Namespace) -> bool:
    """Whether ``refwatch crawl`` will cut this run into several shards, told from the options and the
    snapshots' footers alone, before Scrapy is imported (``False`` when unsure: the run then plans as usual)."""
    from crawler.shards.plan import DEFAULT_SHARD_SIZE, plan_shards

    processes = crawl_processes(args, args.metrics_port)
    if processes < 2 or args.recheck or not args.snapshots or any("://" in str(p) for p in args.snapshots):
        return False
    try:
        plan = plan_shards("probe", [str(path) for path in args.snapshots], args.shard_size or DEFAULT_SHARD_SIZE,
                           processes)
    except Exception:  # noqa: BLE001 - bad input is reported by the run's own checks, with their message
        return False
    return len(plan.shards) >= 2


def crawl_processes(args: argparse.Namespace, metrics_port: Any) -> int:
    """``--processes``, else one per CPU; one when the crawl serves ``/metrics`` and ``--processes`` was not
    given (they are that process's)."""
    from crawler.workers.affinity import default_processes

    if args.processes:
        return args.processes
    return 1 if metrics_port not in (None, "") else default_processes()


def early_shard_starter(args: argparse.Namespace) -> Any:
    from crawler.workers.local import ShardStarter

    return ShardStarter(dict(os.environ))


def _crawl(args: argparse.Namespace, early_starter: Any) -> int:
    from crawler.runner import project_settings, run_crawl, run_sharded
    from crawler.runs.history import read_manifest
    from crawler.runs.metrics import check_targets, export_run_metrics
    from crawler.shards.plan import DEFAULT_SHARD_SIZE

    overrides = crawl_settings(args)
    settings = project_settings(overrides)
    try:
        check_targets(settings.get("REFWATCH_METRICS_TEXTFILE"), settings.get("REFWATCH_PUSHGATEWAY"))
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    processes = crawl_processes(args, settings.get("REFWATCH_METRICS_PORT"))
    result = None
    if processes > 1:
        try:
            result = run_sharded(settings, overrides, processes, args.shard_size or DEFAULT_SHARD_SIZE,
                                 starter=early_starter)
        except RuntimeError as exc:  # shards that failed every attempt: nothing finished, the run can be redone
            print(f"refwatch: {exc}", file=sys.stderr)
            return EXIT_FAILED
    if result is None:
        from crawler.workers.affinity import bind_lone_crawl

        settings.set("REFWATCH_BOUND_CPUS", bind_lone_crawl(processes), priority="cmdline")
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


def cmd_shard(args: argparse.Namespace) -> int:
    """A child of ``--processes`` or of a worker, exec'd or forked from a zygote (``warm_shard_process``): its
    exit status tells the parent what became of the shard."""
    from crawler.runner import project_settings, run_shard
    from crawler.workers.local import EXIT_COMMITTED, EXIT_INCOMPLETE, EXIT_LOST
    from crawler.workers.zygote import set_process_name

    spec = json.loads(args.spec.read_text(encoding="utf-8"))
    shard_id = spec["shard"]["shard_id"]
    set_process_name(f"refwatch {shard_id}")  # which shard, in ps and top
    bound: list[int] = []
    if spec.get("cpus"):  # before the crawl starts its threads: they inherit the binding
        from crawler.workers.affinity import bind_to_free_cpu

        bound = bind_to_free_cpu(spec["cpus"][0])  # the parent's choice, unless another command's crawl holds it
    settings = project_settings({**spec["settings"], "REFWATCH_SHARD": spec["shard"],
                                 "REFWATCH_SHARD_ATTEMPT": spec["attempt"], "REFWATCH_BOUND_CPUS": bound})
    status = run_shard(settings)
    code = {"committed": EXIT_COMMITTED, "lost": EXIT_LOST}.get(status, EXIT_INCOMPLETE)
    # The shard is committed (or not) and its parts written and uploaded: exit without Python's teardown,
    # which unloads numba, Scrapy, scipy, Twisted and pyarrow one by one (0.4-0.6 s of CPU per shard,
    # bench/scaling_bench.py). Logs and standard streams are flushed first.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


#: Settings naming the classes a crawl loads (Scrapy's ``*_BASE`` dicts included), imported by the warm-up.
_COMPONENT_DICTS = ("DOWNLOADER_MIDDLEWARES", "SPIDER_MIDDLEWARES", "ITEM_PIPELINES", "EXTENSIONS")
_COMPONENTS = ("SCHEDULER", "DUPEFILTER_CLASS", "STATS_CLASS", "LOG_FORMATTER", "REQUEST_FINGERPRINTER_CLASS",
               "DOWNLOADER", "TWISTED_DNS_RESOLVER", "SCHEDULER_PRIORITY_QUEUE", "SCHEDULER_DISK_QUEUE",
               "SCHEDULER_MEMORY_QUEUE", "SPIDER_LOADER_CLASS", "DOWNLOADER_CLIENTCONTEXTFACTORY")


def warm_shard_process() -> None:
    """What a shard child's start-up spends its CPU on, done once in a zygote (crawler/workers/zygote.py) so
    that each forked child starts warm: import the command line, Scrapy, Twisted's HTTP client (no reactor
    installed: a child installs its own), every component the settings name, the spider, pyarrow, and hash
    a few tiny images so numba loads its cached kernels for each image shape the crawl meets."""
    import io

    import numpy as np
    import pyarrow.parquet  # noqa: F401 - the readers and the outcome writer
    import scipy.fft  # noqa: F401
    import twisted.internet.epollreactor  # noqa: F401 - the module, not installed
    import twisted.web.client  # noqa: F401 - the download handler's, without a reactor
    from PIL import Image
    from scrapy.core.downloader.handlers.http11 import HTTP11DownloadHandler  # noqa: F401
    from scrapy.spiderloader import get_spider_loader
    from scrapy.utils.misc import load_object

    import crawler.readers.parquet  # noqa: F401
    import crawler.workers.local  # noqa: F401 - cmd_shard's exit statuses
    from crawler.hashing.digest import LUMA_BY_ROWS_PIXELS, hash_bytes
    from crawler.runner import project_settings

    settings = project_settings()
    # Scrapy imports a listed component even when it is switched off (None), so these are imported too.
    paths = [path for name in _COMPONENT_DICTS for path in settings.getwithbase(name)]
    paths += [path for path in settings.getwithbase("DOWNLOAD_HANDLERS").values() if isinstance(path, str)]
    paths += [settings[name] for name in _COMPONENTS if isinstance(settings.get(name), str)]
    for path in paths:
        if "." in path:  # not Scrapy's placeholders ("SENTINEL")
            load_object(path)
    get_spider_loader(settings).load("replay")
    rng = np.random.default_rng(0)
    for mode, fmt in (("RGB", "JPEG"), ("RGBA", "PNG"), ("L", "PNG"), ("P", "GIF")):
        pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        image = Image.fromarray(pixels, "RGB").convert(mode)
        body = io.BytesIO()
        image.save(body, fmt)
        hash_bytes(body.getvalue(), pdq_dihedral=mode == "RGB")
    # From LUMA_BY_ROWS_PIXELS on, pHash/dHash use their row-at-a-time kernel: a flat grey picture of that size
    # (a few kB of JPEG) loads it too; uncached, its compilation alone is ~6 s of CPU.
    tall = LUMA_BY_ROWS_PIXELS // 1000 + 1
    body = io.BytesIO()
    Image.new("RGB", (1000, tall), (128, 128, 128)).save(body, "JPEG")
    hash_bytes(body.getvalue())
