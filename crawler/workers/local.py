"""``refwatch crawl --processes N``: one machine's cores, one child crawl process per shard attempt.

The parent hands the plan's shards out in order, at most ``processes`` children at a time, and never crawls
itself. A child (``refwatch _shard SPEC``) crawls its shard and commits it in the output store; its exit
status says what happened (``EXIT_*`` below). A shard whose attempt fails (a crash, a kill, an incomplete
crawl) is tried again with a new attempt id, up to ``attempts`` times; a commit is final whoever made it.
Scrapy's reactor cannot be restarted in one process, and a child per shard also keeps a shard's memory, a
hostile server's damage and a crash to that shard. On SIGINT/SIGTERM the children get SIGTERM (Scrapy stops
gracefully; an unfinished shard is not committed) and the parent returns what was committed.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crawler.shards.commit import new_attempt_id
from crawler.shards.plan import Plan, Shard

logger = logging.getLogger(__name__)

#: A child's exit status: committed its shard; another attempt had committed it; stopped before the end.
EXIT_COMMITTED = 0
EXIT_LOST = 3
EXIT_INCOMPLETE = 4
#: How often the parent looks at its children (seconds): a shard takes minutes.
POLL_SECONDS = 0.1
#: How long children get to stop after SIGTERM before they are killed.
STOP_GRACE_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class AttemptResult:
    shard_id: str
    attempt: str
    status: str  # committed | lost | incomplete | failed
    returncode: int
    seconds: float


@dataclass
class _Running:
    shard: Shard
    attempt: str
    tries: int
    process: subprocess.Popen[bytes]
    started: float


def child_command(spec_path: Path) -> list[str]:
    return [sys.executable, "-m", "crawler.cli.main", "_shard", str(spec_path)]


def write_spec(folder: Path, settings: dict[str, Any], shard: Shard, attempt: str) -> Path:
    """The child's whole input: the run's settings (as the command line gave them), its shard, its attempt."""
    path = folder / f"{shard.shard_id}-{attempt}.json"
    path.write_text(json.dumps({"settings": settings, "shard": shard.to_json(), "attempt": attempt}), "utf-8")
    return path


def attempt_status(returncode: int) -> str:
    """What a child's exit status says became of its shard."""
    return {EXIT_COMMITTED: "committed", EXIT_LOST: "lost", EXIT_INCOMPLETE: "incomplete"}.get(returncode, "failed")


@contextmanager
def _stop_on_signals() -> Iterator[list[int]]:
    """SIGINT/SIGTERM set a flag the scheduling loop reads, instead of raising in the middle of it."""
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def crawl_shards(plan: Plan, settings: dict[str, Any], *, processes: int, attempts: int = 3,
                 shards: list[Shard] | None = None, env: dict[str, str] | None = None,
                 on_result: Callable[[AttemptResult], None] | None = None) -> list[AttemptResult]:
    """Crawl ``shards`` (default: the whole plan) with at most ``processes`` children; returns every
    attempt's result. A shard is done when an attempt commits it or finds it committed (``lost``)."""
    todo: deque[tuple[Shard, int]] = deque((s, 1) for s in (plan.shards if shards is None else shards))
    running: list[_Running] = []
    results: list[AttemptResult] = []
    child_env = {**os.environ, **(env or {})}
    with tempfile.TemporaryDirectory(prefix="refwatch-shards-") as scratch, _stop_on_signals() as stop:
        while todo or running:
            if stop:
                _stop_children(running)
                for r in running:
                    results.append(AttemptResult(r.shard.shard_id, r.attempt, "incomplete",
                                                 r.process.returncode or -1, time.monotonic() - r.started))
                break
            while todo and len(running) < max(1, processes):
                shard, tries = todo.popleft()
                attempt = new_attempt_id()
                spec = write_spec(Path(scratch), settings, shard, attempt)
                process = subprocess.Popen(child_command(spec), env=child_env, stdin=subprocess.DEVNULL)
                running.append(_Running(shard, attempt, tries, process, time.monotonic()))
            time.sleep(POLL_SECONDS)
            for r in list(running):
                code = r.process.poll()
                if code is None:
                    continue
                running.remove(r)
                result = AttemptResult(r.shard.shard_id, r.attempt, attempt_status(code), code,
                                       time.monotonic() - r.started)
                results.append(result)
                if on_result is not None:
                    on_result(result)
                if result.status in ("committed", "lost"):
                    continue
                if r.tries < attempts:
                    logger.warning("shard %s attempt %s ended %s (exit %d): trying again (%d of %d)",
                                   r.shard.shard_id, r.attempt, result.status, code, r.tries + 1, attempts)
                    todo.append((r.shard, r.tries + 1))
                else:
                    logger.error("shard %s failed %d times (last exit %d): giving up", r.shard.shard_id,
                                 attempts, code)
    return results


def _stop_children(running: list[_Running]) -> None:
    for r in running:
        if r.process.poll() is None:
            r.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for r in running:
        try:
            r.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            r.process.kill()
            r.process.wait()
