"""``refwatch crawl --processes N``: one machine's cores, one child crawl process per shard attempt.

The parent hands the plan's shards out in order, at most ``processes`` children at a time, and never crawls
itself. A child (``refwatch _shard SPEC``) crawls its shard and commits it in the output store; its exit
status says what happened (``EXIT_*`` below). A shard whose attempt fails (a crash, a kill, an incomplete
crawl) is tried again with a new attempt id, up to ``attempts`` times; a commit is final whoever made it.
Scrapy's reactor cannot be restarted in one process, and a child per shard also keeps a shard's memory, a
hostile server's damage and a crash to that shard. On SIGINT/SIGTERM the children get SIGTERM (Scrapy stops
gracefully; an unfinished shard is not committed) and the parent returns what was committed.

Children start warm: ``ShardStarter`` forks them from a zygote that imported the crawl stack once
(``crawler.workers.zygote``), which saves each child the 1.4-2.0 s of CPU an interpreter spends before its
engine starts. ``REFWATCH_SHARD_START=exec`` starts each as a new interpreter instead (``child_command``), as
does a zygote that dies or refuses to fork (with a warning); the exit statuses are the same either way.
When the parent owns the CPUs it may use (``--processes`` equal to their number, the default), each running
child is bound to a CPU of its own (``crawler.workers.affinity``; ``REFWATCH_PIN_PROCESSES``).
"""

from __future__ import annotations

import contextlib
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
from typing import Any, Protocol

from crawler.shards.commit import new_attempt_id
from crawler.shards.plan import Plan, Shard
from crawler.workers import zygote
from crawler.workers.affinity import CpuSlots

logger = logging.getLogger(__name__)

#: A child's exit status: committed its shard; another attempt had committed it; stopped before the end.
EXIT_COMMITTED = 0
EXIT_LOST = 3
EXIT_INCOMPLETE = 4
#: How often the parent looks at its children (seconds): a shard takes minutes.
POLL_SECONDS = 0.1
#: How long children get to stop after SIGTERM before they are killed.
STOP_GRACE_SECONDS = 60.0
#: ``fork`` (the default): shard children fork from a warm zygote; ``exec``: each is a new interpreter.
SHARD_START_ENV = "REFWATCH_SHARD_START"
#: What the zygote runs once, and what each forked child runs with its argv (``python -m crawler.cli.main``'s).
ZYGOTE_WARM = "crawler.cli.crawl:warm_shard_process"
CHILD_ENTRY = "crawler.cli.main:main"


@dataclass(frozen=True, slots=True)
class AttemptResult:
    shard_id: str
    attempt: str
    status: str  # committed | lost | incomplete | failed
    returncode: int
    seconds: float
    cpu_seconds: float | None = None  # the child's CPU (wait4), when known


class ShardProcess(Protocol):
    """A shard child as its parent handles it, exec'd or forked: the part of ``subprocess.Popen`` used here."""

    pid: int
    returncode: int | None
    cpu_seconds: float | None

    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def send_signal(self, sig: int) -> None: ...
    def kill(self) -> None: ...


@dataclass
class _Running:
    shard: Shard
    attempt: str
    tries: int
    process: ShardProcess
    started: float
    cpu: int | None = None  # the CPU it is bound to (crawler/workers/affinity.py)


def child_command(spec_path: Path) -> list[str]:
    return [sys.executable, "-m", "crawler.cli.main", "_shard", str(spec_path)]


def zygote_command() -> list[str]:
    return [sys.executable, "-m", "crawler.workers.zygote", "--warm", ZYGOTE_WARM, "--entry", CHILD_ENTRY]


class ExecChild:
    """An exec'd child, reaped with ``wait4`` so that its CPU is known as a forked child's is."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.pid = process.pid
        self.cpu_seconds: float | None = None

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def poll(self, block: bool = False) -> int | None:
        if self.process.returncode is None:
            pid, status, usage = os.wait4(self.pid, 0 if block else os.WNOHANG)
            if pid:
                self.cpu_seconds = usage.ru_utime + usage.ru_stime
                self.process.returncode = os.waitstatus_to_exitcode(status)  # Popen must not reap it again
        return self.process.returncode

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None:
            return self.poll(block=True)  # type: ignore[return-value]
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.process.args, timeout)
            time.sleep(0.02)
        return self.process.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ShardStarter:
    """Starts shard children with ``env``: forked from a zygote (started on entering, ended on leaving), or
    exec'd with ``REFWATCH_SHARD_START=exec``, without pidfds (Linux < 5.3), or once the zygote failed."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self._zygote: zygote.Zygote | None = None
        self._announced = False

    def __enter__(self) -> ShardStarter:
        mode = self.env.get(SHARD_START_ENV, "fork")
        if mode not in ("fork", "exec"):
            logger.warning("%s=%r: expected fork or exec; shard children are exec'd", SHARD_START_ENV, mode)
        elif mode == "fork" and zygote.available():
            self._zygote = zygote.Zygote(zygote_command(), self.env)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """End the zygote (children still running are its to wait for); later starts exec. Idempotent."""
        if self._zygote is not None:
            self._zygote.close()
            self._zygote = None

    def ready(self) -> bool:
        """Whether ``start`` would start a child at once rather than wait for the zygote's imports (~2 s): the
        Redis worker claims a shard only then, since its loop, which renews its leases, would wait too."""
        return self._zygote is None or not self._zygote.warming

    @property
    def zygote_pid(self) -> int | None:
        return self._zygote.pid if self._zygote is not None else None

    def start(self, spec: Path) -> ShardProcess:
        if self._zygote is not None:
            try:
                child = self._zygote.fork(["_shard", str(spec)], self.env, os.getcwd())
                if not self._announced:
                    self._announced = True
                    logger.info("shard children fork from zygote %d (its imports took %.1f s of CPU)",
                                self._zygote.pid, self._zygote.info.get("warm_cpu", 0.0))
                return child
            except zygote.ZygoteError as exc:
                logger.warning("shard children cannot be forked (%s): exec'ing them from now on", exc)
                self._zygote.close()
                self._zygote = None
        return ExecChild(subprocess.Popen(child_command(spec), env=self.env, stdin=subprocess.DEVNULL))


def write_spec(folder: Path, settings: dict[str, Any], shard: Shard, attempt: str, cpu: int | None = None) -> Path:
    """The child's whole input: the run's settings (as the command line gave them), its shard, its attempt,
    and the CPU it binds itself to (``None``: it runs where the scheduler puts it)."""
    path = folder / f"{shard.shard_id}-{attempt}.json"
    spec: dict[str, Any] = {"settings": settings, "shard": shard.to_json(), "attempt": attempt}
    if cpu is not None:
        spec["cpus"] = [cpu]
    path.write_text(json.dumps(spec), "utf-8")
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
                 on_result: Callable[[AttemptResult], None] | None = None,
                 starter: ShardStarter | None = None) -> list[AttemptResult]:
    """Crawl ``shards`` (default: the whole plan) with at most ``processes`` children; returns every
    attempt's result. A shard is done when an attempt commits it or finds it committed (``lost``).
    ``starter``: one the caller entered already (its zygote warming up while the caller prepared the run);
    else one is made here, with ``env``."""
    todo: deque[tuple[Shard, int]] = deque((s, 1) for s in (plan.shards if shards is None else shards))
    running: list[_Running] = []
    results: list[AttemptResult] = []
    environment = {**os.environ, **(env or {})}
    own_starter = ShardStarter(environment) if starter is None else contextlib.nullcontext(starter)
    cpus = CpuSlots.for_processes(processes, environment)
    with (tempfile.TemporaryDirectory(prefix="refwatch-shards-") as scratch, _stop_on_signals() as stop,
          own_starter as starter):
        while todo or running:
            if stop:
                _stop_children(running)
                for r in running:
                    results.append(AttemptResult(r.shard.shard_id, r.attempt, "incomplete",
                                                 r.process.returncode or -1, time.monotonic() - r.started,
                                                 r.process.cpu_seconds))
                break
            while todo and len(running) < max(1, processes):
                shard, tries = todo.popleft()
                attempt, cpu = new_attempt_id(), cpus.take()
                spec = write_spec(Path(scratch), settings, shard, attempt, cpu)
                running.append(_Running(shard, attempt, tries, starter.start(spec), time.monotonic(), cpu))
            time.sleep(POLL_SECONDS)
            for r in list(running):
                code = r.process.poll()
                if code is None:
                    continue
                running.remove(r)
                cpus.give_back(r.cpu)
                result = AttemptResult(r.shard.shard_id, r.attempt, attempt_status(code), code,
                                       time.monotonic() - r.started, r.process.cpu_seconds)
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
