"""``refwatch queue drain|stats``: read the match-event queue (``file://DIR`` or ``s3://BUCKET/PREFIX``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from crawler.cli.common import DEFAULT_OUT, EXIT_FAILED, EXIT_OK, add_s3_options, positive


def add_queue_commands(commands: Any) -> None:
    """Add ``queue drain|stats`` to the ``refwatch`` sub-command parsers."""
    queue = commands.add_parser("queue", help="read the match-event queue")
    queue_commands = queue.add_subparsers(dest="queue_command", required=True, metavar="QUEUE_COMMAND")
    drain = queue_commands.add_parser("drain", help="print each pending event and acknowledge it")
    _add_queue_options(drain)
    drain.add_argument("--max", type=positive(int), default=None,
                       help="stop once N events are handled (batches are never split: up to one batch more)")
    drain.add_argument("--lease", type=positive(float), default=None, metavar="SECONDS",
                       help="how long a received batch is ours before it is delivered again (default 300)")
    stats = queue_commands.add_parser("stats", help="count pending, in-flight, acknowledged and malformed events")
    _add_queue_options(stats)


def _add_queue_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--queue", default=None,
                   help=f"queue URL: file://DIR or s3://BUCKET/PREFIX (default file://{DEFAULT_OUT}/queue)")
    p.add_argument("--json", action="store_true", help="JSON output")
    add_s3_options(p)


def _queue_url(given: str | None) -> str:
    return given or f"file://{Path(DEFAULT_OUT, 'queue').resolve()}"


def cmd_queue(args: argparse.Namespace) -> int:
    """Bad URL or options, or a queue that cannot be reached at all: exit 2; a failure while draining: exit 1."""
    from crawler.events.queue import DEFAULT_LEASE_SECONDS, open_queue
    from crawler.storage.base import StoreError

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
