"""The ``refwatch`` command line: it only translates options into settings and prints results.

Each command group is its own module in this package (``crawl``, ``inputs``: refs and hash, ``queue``,
``hashlist``, ``report``, ``export``, ``demo``); this one builds the parser from them and maps errors to
exit statuses.

Exit status: 0 done; 1 the run failed; 2 bad input (a missing or malformed snapshot, hash list or queue
URL), reported as one line naming the file, line or record, with nothing written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from crawler import __version__
from crawler.cli.common import EXIT_BAD_INPUT, EXIT_OK, BadInput
from crawler.cli.crawl import add_crawl_command, cmd_crawl, cmd_shard
from crawler.cli.demo import add_demo_command, cmd_demo
from crawler.cli.distributed import add_distributed_commands, cmd_seed, cmd_status, cmd_worker
from crawler.cli.export import add_export_command, cmd_export
from crawler.cli.hashlist import add_hashlist_commands, cmd_hashlist
from crawler.cli.inputs import add_input_commands, cmd_hash, cmd_refs
from crawler.cli.queue import add_queue_commands, cmd_queue
from crawler.cli.report import add_report_command, cmd_report

HANDLERS = {"crawl": cmd_crawl, "refs": cmd_refs, "hash": cmd_hash, "queue": cmd_queue, "hashlist": cmd_hashlist,
            "export-clean": cmd_export, "report": cmd_report, "demo": cmd_demo,
            "seed": cmd_seed, "worker": cmd_worker, "status": cmd_status, "_shard": cmd_shard}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refwatch", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"refwatch {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_crawl_command(commands)
    add_distributed_commands(commands)
    add_input_commands(commands)
    add_queue_commands(commands)
    add_hashlist_commands(commands)
    add_export_command(commands)
    add_report_command(commands)
    add_demo_command(commands)
    return parser


#: Libraries whose DEBUG records carry credentials (botocore logs each request's signed Authorization header,
#: with the access key id): they log at INFO at most, whatever --log-level says.
CREDENTIAL_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "redis")


def main(argv: Sequence[str] | None = None) -> int:
    import logging

    for name in CREDENTIAL_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    args = build_parser().parse_args(argv)
    try:
        return HANDLERS[args.command](args)
    except BrokenPipeError:
        return EXIT_OK
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if isinstance(exc, bad_input_errors()):
            print(f"refwatch: error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        raise


def bad_input_errors() -> tuple[type[Exception], ...]:
    """The exceptions that mean bad input (one line, exit 2). Imported only when something failed: their
    modules load pyarrow, Scrapy and the stores, which a command should not wait for before it starts (``crawl
    --processes`` starts its shard zygote first)."""
    from crawler.events.queue import QueueError
    from crawler.matching.hashlist import HashListError
    from crawler.references import SnapshotError
    from crawler.runner import InputError
    from crawler.storage.base import StoreError

    return InputError, SnapshotError, HashListError, QueueError, StoreError, BadInput


if __name__ == "__main__":
    sys.exit(main())
