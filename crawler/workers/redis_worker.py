"""``refwatch worker --redis URL``: claim shards of any seeded run from Redis, crawl each in a child process,
commit it in the output store, then acknowledge it.

The loop, for up to ``processes`` shards at once: ``claim`` (lapsed leases of dead workers first, then new
shards) → a ``refwatch _shard`` child crawls the shard and commits it create-only in the output store →
``ack``. While a child runs, its claim is renewed every third of the lease; a renewal refused means another
worker owns the shard now (this one was presumed dead: a pause, a partition), so the child is killed and its
attempt discarded — whichever attempt commits first is the shard's, so even a child that commits before it
is stopped leaves one result. A child that fails is not acknowledged: its claim lapses and the shard is
claimed again (after ``max_deliveries`` it is dead-lettered for an operator). When every shard of a run is
acknowledged, one worker (the run's finalize lock) runs the end-of-run pass over the committed shards;
a worker that dies in it loses the lock after the lease and another one finishes it.

SIGTERM/SIGINT: stop claiming, stop the children (Scrapy stops gracefully; an unfinished shard is not
committed), release their claims so other workers take them at once, exit 0.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from crawler.coordination.shard_model import Claim, RunState
from crawler.coordination.shardqueue import ShardQueue
from crawler.runs.context import run_context
from crawler.runs.counters import FETCH_BUCKETS, HASH_BUCKETS, Buckets, add_stats
from crawler.runs.history import read_manifest
from crawler.shards.commit import discard_attempt, new_attempt_id, read_commit, read_commits, run_store
from crawler.shards.finish import IncompleteRunError, finish_sharded_run, missing_shards
from crawler.shards.plan import Plan, read_plan
from crawler.workers.affinity import CpuSlots
from crawler.workers.local import (EXIT_COMMITTED, EXIT_LOST, STOP_GRACE_SECONDS, ShardProcess, ShardStarter,
                                   attempt_status, write_spec)

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.2
#: How often a worker looks for runs whose shards are all done (a few Redis calls per active run).
FINALIZE_CHECK_SECONDS = 2.0


def default_consumer() -> str:
    """A name unique to this worker process: host and pid (Redis sees it in XPENDING; no secret in it)."""
    host = "".join(c if c.isalnum() or c in "-._" else "-" for c in socket.gethostname())[:60] or "host"
    return f"{host}-{os.getpid()}"


@dataclass
class WorkerCounters:
    """What the worker did, for its /metrics and its log (names as the metrics export them)."""

    attempts: dict[str, int] = field(default_factory=lambda: {"committed": 0, "lost": 0, "failed": 0,
                                                              "released": 0})
    lease_renewals: int = 0
    leases_lost: int = 0
    finalized_runs: int = 0


@dataclass
class CrawlTotals:
    """The crawl counters of this worker's shard crawls: finished ones summed, running ones read live from
    the stats file each writes (``REFWATCH_STATS_FILE``), so the worker's /metrics only ever go up."""

    stats: dict[str, Any] = field(default_factory=dict)
    fetch: Buckets = field(default_factory=lambda: Buckets(FETCH_BUCKETS))
    hashing: Buckets = field(default_factory=lambda: Buckets(HASH_BUCKETS))

    def add_file(self, path: Path) -> int:
        """Add one stats file's counters; returns its in-flight requests (0 if it cannot be read)."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return 0
        add_stats(self.stats, data.get("stats", {}))
        self.fetch.add(Buckets.from_json(data["fetch_duration"]))
        self.hashing.add(Buckets.from_json(data["hash_duration"]))
        return int(data.get("inflight", 0))

    def copy(self) -> CrawlTotals:
        return CrawlTotals(dict(self.stats), Buckets(self.fetch.bounds, list(self.fetch.counts), self.fetch.total),
                           Buckets(self.hashing.bounds, list(self.hashing.counts), self.hashing.total))


@dataclass
class _Child:
    claim: Claim
    attempt: str
    process: ShardProcess  # forked from the worker's zygote, or exec'd (crawler/workers/local.py)
    started: float
    renewed: float
    stats_file: Path
    cpu: int | None = None  # the CPU it is bound to (crawler/workers/affinity.py)


@dataclass
class _RunInfo:
    spec: dict[str, Any]
    plan: Plan


class ShardWorker:
    def __init__(self, queue: ShardQueue, make_settings: Callable[[dict[str, Any]], Any], *, processes: int = 1,
                 consumer: str | None = None, exit_when_idle: bool = False, env: dict[str, str] | None = None,
                 child_settings: dict[str, Any] | None = None,
                 on_counters: Callable[[WorkerCounters, int], None] | None = None) -> None:
        self.queue = queue
        self.make_settings = make_settings  # the run's settings object from its spec (Scrapy Settings)
        self.processes = max(1, processes)
        self.consumer = consumer or default_consumer()
        self.exit_when_idle = exit_when_idle
        self.env = {**os.environ, **(env or {})}
        self.child_settings = dict(child_settings or {})  # this worker's own, on top of the run's (Redis URL)
        self.counters = WorkerCounters()
        self.finished = CrawlTotals()  # the crawl counters of this worker's ended shard crawls
        self.on_counters = on_counters
        self.lease = queue.lease_seconds
        self._children: list[_Child] = []
        self._cpus = CpuSlots.for_processes(self.processes, self.env)
        self._runs: dict[str, _RunInfo] = {}
        self._stop: list[int] = []
        self._next_finalize_check = 0.0
        self._unfinishable: set[str] = set()  # runs whose end-of-run pass failed here (missing commits)
        self._acks: list[Claim] = []  # committed shards whose ack has not reached Redis yet
        self._redis_down_since: float | None = None

    # -- the loop ------------------------------------------------------------------------------------

    def run(self) -> int:
        previous = {sig: signal.signal(sig, lambda signum, frame: self._stop.append(signum))
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            with (tempfile.TemporaryDirectory(prefix="refwatch-worker-") as scratch,
                  ShardStarter(self.env) as starter):
                self._scratch = Path(scratch)
                self._starter = starter
                logger.info("worker %s: up to %d shards at once, lease %.0f s", self.consumer, self.processes,
                            self.lease)
                while not self._stop:
                    self._reap()
                    try:
                        self._send_acks()
                        self._heartbeat()
                        self._finalize_ready_runs()
                        if len(self._children) < self.processes and self._start_next():
                            continue
                        if self.exit_when_idle and not self._children and not self._acks and self._idle():
                            logger.info("worker %s: no shard pending or in flight: exiting", self.consumer)
                            return 0
                        self._redis_back()
                    except redis.RedisError as exc:
                        self._redis_trouble(exc)
                    self._report()
                    time.sleep(POLL_SECONDS)
                self._shutdown()
                return 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _report(self) -> None:
        if self.on_counters is not None:
            self.on_counters(self.counters, len(self._children))

    # -- shards ----------------------------------------------------------------------------------------

    def _start_next(self) -> bool:
        if not self._starter.ready():  # no claim while the zygote imports: the claim's lease would run meanwhile
            return False
        claim = self.queue.claim(self.consumer)
        if claim is None:
            return False
        try:
            info = self._run_info(claim.run_id)
            shard = info.plan.shard(claim.shard_id)
        except Exception as exc:  # noqa: BLE001 - a run whose spec or plan is unreadable: leave the claim to lapse
            logger.error("worker %s: cannot crawl shard %s of run %s: %s", self.consumer, claim.shard_id,
                         claim.run_id, exc)
            return False
        run = self._run_context(claim.run_id)
        if read_commit(run_store(run), claim.run_id, claim.shard_id) is not None:
            self.queue.ack(claim)  # committed before (its ack was lost with a worker): nothing to crawl
            return True
        attempt = new_attempt_id()
        stats_file = self._scratch / f"{attempt}.stats.json"
        settings = {**info.spec["settings"], **self.child_settings, "REFWATCH_STATS_FILE": str(stats_file)}
        cpu = self._cpus.take()
        spec = write_spec(self._scratch, settings, shard, attempt, cpu)
        process = self._starter.start(spec)
        now = time.monotonic()
        self._children.append(_Child(claim, attempt, process, now, now, stats_file, cpu))
        logger.info("worker %s: shard %s of run %s (delivery %d), attempt %s", self.consumer, claim.shard_id,
                    claim.run_id, claim.deliveries, attempt)
        return True

    def _run_context(self, run_id: str) -> Any:
        settings = self._runs[run_id].spec["settings"]
        return run_context(settings["REFWATCH_OUT"], run_id, settings.get("REFWATCH_QUEUE"),
                           self.make_settings(settings))

    def _run_info(self, run_id: str) -> _RunInfo:
        info = self._runs.get(run_id)
        if info is None:
            spec = self.queue.get_run(run_id)
            if spec is None:
                raise LookupError(f"run {run_id} has no spec in Redis (seed it again)")
            settings = spec["settings"]
            run = run_context(settings["REFWATCH_OUT"], run_id, settings.get("REFWATCH_QUEUE"),
                              self.make_settings(settings))
            run.pull(f"runs/{run_id}/plan.json")
            info = _RunInfo(spec, read_plan(run.run_dir))
            self._runs[run_id] = info
        return info

    def _reap(self) -> None:
        for child in list(self._children):
            code = child.process.poll()
            if code is None:
                continue
            self._forget(child)
            status = attempt_status(code)
            if code in (EXIT_COMMITTED, EXIT_LOST):
                self._acks.append(child.claim)  # sent by the loop, again after a Redis outage if need be
                self.counters.attempts["committed" if code == EXIT_COMMITTED else "lost"] += 1
                logger.info("worker %s: shard %s of run %s %s in %.1f s", self.consumer, child.claim.shard_id,
                            child.claim.run_id, status, time.monotonic() - child.started)
            else:  # not acked: the claim lapses and the shard is claimed again (dead-lettered after a few)
                self.counters.attempts["failed"] += 1
                logger.warning("worker %s: shard %s of run %s ended %s (exit %d); it will be claimed again",
                               self.consumer, child.claim.shard_id, child.claim.run_id, status, code)

    def _forget(self, child: _Child) -> None:
        """An ended child: no longer running, its CPU free again, its counters added to the worker's."""
        self._children.remove(child)
        self._cpus.give_back(child.cpu)
        self._absorb(child)

    def _absorb(self, child: _Child) -> None:
        """An ended child's counters join the worker's totals (its work was done, committed or not)."""
        self.finished.add_file(child.stats_file)
        child.stats_file.unlink(missing_ok=True)

    def crawl_totals(self) -> tuple[CrawlTotals, int]:
        """This worker's crawl counters now (ended crawls plus running ones) and its requests in flight."""
        totals = self.finished.copy()
        inflight = sum(totals.add_file(child.stats_file) for child in list(self._children))
        return totals, inflight

    def _send_acks(self) -> None:
        while self._acks:
            self.queue.ack(self._acks[0])
            self._acks.pop(0)

    def _redis_trouble(self, exc: Exception) -> None:
        """Redis away: children keep crawling (their commits are in the output store), acks wait, nothing is
        claimed. Leases are not renewed meanwhile; if another worker takes a shard over, the first commit wins."""
        if self._redis_down_since is None:
            self._redis_down_since = time.monotonic()
            logger.warning("worker %s: Redis unavailable (%s): shard crawls go on, claims and acks wait",
                           self.consumer, exc)
        time.sleep(min(5.0, 0.5 + (time.monotonic() - self._redis_down_since) / 10))

    def _redis_back(self) -> None:
        if self._redis_down_since is not None:
            logger.info("worker %s: Redis is back after %.1f s", self.consumer,
                        time.monotonic() - self._redis_down_since)
            self._redis_down_since = None

    def _heartbeat(self) -> None:
        now = time.monotonic()
        for child in list(self._children):
            if now - child.renewed < self.lease / 3:
                continue
            if self.queue.renew(child.claim):
                child.renewed = now
                self.counters.lease_renewals += 1
                continue
            # Another worker owns the shard now: stop this attempt and throw its rows away.
            self.counters.leases_lost += 1
            logger.warning("worker %s: lost the lease of shard %s of run %s: stopping attempt %s", self.consumer,
                           child.claim.shard_id, child.claim.run_id, child.attempt)
            child.process.kill()
            child.process.wait()
            self._forget(child)
            self._discard(child)

    def _discard(self, child: _Child) -> None:
        info = self._runs.get(child.claim.run_id)
        if info is None:
            return
        run = self._run_context(child.claim.run_id)
        commit = read_commit(run_store(run), child.claim.run_id, child.claim.shard_id)
        if commit is None or commit.attempt != child.attempt:
            discard_attempt(run, child.claim.shard_id, child.attempt)

    # -- the end of a run ------------------------------------------------------------------------------

    def _finalize_ready_runs(self, now: bool = False) -> None:
        if not now and time.monotonic() < self._next_finalize_check:
            return
        self._next_finalize_check = time.monotonic() + FINALIZE_CHECK_SECONDS
        for run_id in self.queue.active_runs():
            counts = self.queue.counts(run_id)
            if counts.pending or counts.in_flight or counts.dead:
                continue  # the commit markers decide whether the run is whole: a re-seeded run skipped some
            if not self.queue.try_finalize(run_id, self.consumer, self.lease):
                continue
            try:
                self._finalize(run_id)
            except IncompleteRunError as exc:  # commits missing although Redis says done (a lost stream)
                self._unfinishable.add(run_id)
                logger.error("worker %s: run %s cannot finish yet: %s; seed it again to re-plan missing shards",
                             self.consumer, run_id, exc)
                self.queue.end_finalize(run_id, self.consumer)
            except Exception:  # noqa: BLE001 - the lock lapses; another worker (or this one) tries again
                logger.exception("worker %s: the end-of-run pass of run %s failed", self.consumer, run_id)
                self.queue.end_finalize(run_id, self.consumer)

    def _finalize(self, run_id: str) -> None:
        info = self._run_info(run_id)
        settings_map = info.spec["settings"]
        settings = self.make_settings(settings_map)
        run = run_context(settings_map["REFWATCH_OUT"], run_id, settings_map.get("REFWATCH_QUEUE"), settings)
        run.pull(f"runs/{run_id}/manifest.json")
        manifest = read_manifest(run.run_dir)
        if manifest is None:
            raise IncompleteRunError(f"run {run_id}: no manifest in the output (was it seeded?)")
        if manifest.status != "finished":
            missing = missing_shards(info.plan, read_commits(run_store(run), run_id))
            if missing:
                raise IncompleteRunError(f"{len(missing)} shards have no commit (first: {missing[0]})")
            if run.remote is not None:
                run.remote.pull_manifests()  # the series' earlier runs, for drift
            summary = finish_sharded_run(run, info.plan, manifest, settings, list(settings_map["REFWATCH_SNAPSHOTS"]))
            logger.info("worker %s: run %s finished: %d references, %d alive", self.consumer, run_id,
                        summary["references"], summary["alive"])
        self.queue.set_state(run_id, RunState.FINISHED)
        self.counters.finalized_runs += 1

    def _idle(self) -> bool:
        """Nothing to claim or finish: no shard pending or in flight, and no run waiting for its end-of-run
        pass (which this worker tries first, so a fleet of ``--exit-when-idle`` workers finishes its runs)."""
        self._finalize_ready_runs(now=True)
        for run_id in self.queue.active_runs():
            counts = self.queue.counts(run_id)
            if counts.pending or counts.in_flight:
                return False
            state = self.queue.state(run_id)
            if not counts.dead and run_id not in self._unfinishable and state is not None and state.active:
                return False  # all done, being finished by another worker (or its lock about to lapse)
        return True

    # -- stopping --------------------------------------------------------------------------------------

    def _shutdown(self) -> None:
        logger.info("worker %s: stopping %d shard crawls and releasing them", self.consumer, len(self._children))
        for child in self._children:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for child in self._children:
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
            try:
                if child.process.returncode in (EXIT_COMMITTED, EXIT_LOST):
                    self.queue.ack(child.claim)
                    self.counters.attempts["committed"] += 1
                else:
                    self.queue.release(child.claim)
                    self.counters.attempts["released"] += 1
            except redis.RedisError as exc:  # the claim lapses after the lease instead; a commit stays a commit
                logger.warning("worker %s: could not tell Redis about shard %s: %s", self.consumer,
                               child.claim.shard_id, exc)
        self._children.clear()
        try:
            self._send_acks()
        except redis.RedisError:
            pass
