"""Many machines, one crawl: ``refwatch seed``, ``refwatch worker`` and ``refwatch status`` (Redis Streams).

``seed`` plans a run (the same plan ``crawl --processes`` makes), writes it and the manifest to the output,
stores the run's settings in Redis so every worker crawls the same way, and enqueues the shards without a
commit. ``worker`` claims and crawls shards of any seeded run until stopped. ``status`` counts a run's shards
and references. The outputs are a single-machine run's, so ``report``, ``export-clean`` and re-checks read them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from crawler.cli.common import EXIT_BAD_INPUT, EXIT_OK, BadInput, positive
from crawler.cli.crawl import add_crawl_options, crawl_settings


def add_distributed_commands(commands: Any) -> None:
    seed = commands.add_parser("seed", help="plan a run into shards and enqueue them in Redis for workers")
    seed.add_argument("snapshots", nargs="+", metavar="SNAPSHOT", help="snapshot files every worker can read")
    seed.add_argument("--redis", required=True, metavar="URL", help="redis://HOST:PORT/DB the workers share")
    seed.add_argument("--shard-size", type=positive(int), default=None, metavar="ROWS",
                      help="references per shard of a Parquet snapshot (default 20000)")
    add_crawl_options(seed)

    worker = commands.add_parser("worker", help="claim and crawl shards of seeded runs until stopped")
    worker.add_argument("--redis", required=True, metavar="URL", help="redis://HOST:PORT/DB the workers share")
    worker.add_argument("--processes", type=positive(int), default=None, metavar="N",
                        help="shards crawled at once, one child process each (default: one per core)")
    worker.add_argument("--lease", type=positive(float), default=120.0, metavar="SECONDS",
                        help="a shard whose worker stops renewing for this long is taken over (default 120)")
    worker.add_argument("--max-deliveries", type=positive(int), default=5, metavar="N",
                        help="a shard handed out this many times without a commit is dead-lettered (default 5)")
    worker.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port")
    worker.add_argument("--metrics-address", default="0.0.0.0", help="address /metrics listens on")
    worker.add_argument("--exit-when-idle", action="store_true",
                        help="exit 0 once no shard of any run is pending or in flight")
    worker.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")

    status = commands.add_parser("status", help="shards and references of seeded runs: done, pending, ETA")
    status.add_argument("--redis", required=True, metavar="URL", help="redis://HOST:PORT/DB the workers share")
    status.add_argument("--run-id", default=None, help="one run (default: every active run)")
    status.add_argument("--json", action="store_true", help="print the status as JSON")


def _queue(url: str, **options: Any) -> Any:
    import redis

    from crawler.coordination.shardqueue import ShardQueue

    try:
        queue = ShardQueue.from_url(url, **options)
        queue.active_runs()  # reachable, and a Redis
    except (redis.RedisError, ValueError) as exc:
        raise BadInput(f"cannot use Redis at {_safe_url(url)}: {exc}") from None
    return queue


def _safe_url(url: str) -> str:
    """The URL without its password, for messages (``redis://user:secret@host`` -> ``redis://user:***@host``)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def cmd_seed(args: argparse.Namespace) -> int:
    from crawler.runner import plan_run, prepare_sharded_run, project_settings
    from crawler.shards.commit import read_commits, run_store
    from crawler.shards.plan import DEFAULT_SHARD_SIZE

    queue = _queue(args.redis)
    overrides = crawl_settings(args)
    settings = project_settings(overrides)
    run, plan, snapshots = plan_run(settings, args.shard_size or DEFAULT_SHARD_SIZE)
    sharded = prepare_sharded_run(settings, overrides, run, plan, snapshots, keep_commits=True)
    if sharded.manifest.status == "finished":
        print(f"run {run.run_id} has already finished: nothing to seed", file=sys.stderr)
        print(json.dumps({"run_id": run.run_id, "finished": True, "enqueued": 0}) if args.json else run.run_id)
        return EXIT_OK
    committed = read_commits(run_store(run), run.run_id)
    spec = {"settings": sharded.child_settings, "shards": len(sharded.plan.shards),
            "references": sharded.plan.references, "seeded_at": time.time(), "out": run.run_location}
    queue.put_run(run.run_id, spec)
    added = queue.enqueue(run.run_id, [s.shard_id for s in sharded.plan.shards], skip=set(committed))
    result = {"run_id": run.run_id, "shards": len(sharded.plan.shards), "enqueued": added,
              "committed": len(committed), "references": sharded.plan.references, "out": run.run_location}
    if args.json:
        print(json.dumps(result))
    else:
        print(run.run_id)
        print(f"{result['shards']} shards ({added} enqueued now, {len(committed)} already committed) -> "
              f"{run.run_location}", file=sys.stderr)
    return EXIT_OK


def cmd_worker(args: argparse.Namespace) -> int:
    import logging
    import os

    from crawler.runner import project_settings
    from crawler.workers.affinity import default_processes
    from crawler.workers.metrics import serve_worker_metrics
    from crawler.workers.redis_worker import ShardWorker

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s [%(name)s] %(levelname)s: %(message)s")
    queue = _queue(args.redis, lease_seconds=args.lease, max_deliveries=args.max_deliveries)
    worker = ShardWorker(queue, lambda overrides: project_settings(overrides),
                         processes=args.processes or default_processes(), exit_when_idle=args.exit_when_idle,
                         child_settings={"REFWATCH_REDIS_URL": args.redis})  # shared politeness
    server = None
    if args.metrics_port is not None:
        server = serve_worker_metrics(worker, args.metrics_port, args.metrics_address)
    try:
        return worker.run()
    finally:
        if server is not None:
            server.shutdown()


def cmd_status(args: argparse.Namespace) -> int:
    from crawler.workers.status import run_status

    queue = _queue(args.redis)
    run_ids = [args.run_id] if args.run_id else queue.active_runs()
    if args.run_id and queue.get_run(args.run_id) is None:
        print(f"refwatch: error: no run {args.run_id!r} was seeded in this Redis", file=sys.stderr)
        return EXIT_BAD_INPUT
    statuses = [run_status(queue, run_id) for run_id in run_ids]
    if args.json:
        print(json.dumps(statuses if not args.run_id else statuses[0], indent=2))
        return EXIT_OK
    if not statuses:
        print("no active runs")
    for s in statuses:
        eta = "-" if s["eta_seconds"] is None else f"{s['eta_seconds'] / 60:.1f} min"
        print(f"run {s['run_id']}: {s['state']}\n"
              f"  shards      {s['shards']['committed']} committed / {s['shards']['planned']} planned; "
              f"{s['shards']['pending']} pending, {s['shards']['in_flight']} in flight, {s['shards']['dead']} dead\n"
              f"  references  {s['references']['done']} done / {s['references']['planned'] or '?'} planned; "
              f"{s['rate_per_second']:.1f}/s, ETA {eta}")
    return EXIT_OK
