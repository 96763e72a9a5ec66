"""The shard queue: the shards of seeded runs handed out to many workers through Redis Streams consumer groups.

Redis only hands shards out; the output store is the source of truth. A shard attempt counts once its
create-only commit marker exists in the store, so everything here may be lost or doubled without a wrong
result: a lost stream is re-planned by seeding again (``put_run`` + ``enqueue(skip=committed)``), and a shard
handed to two workers (a lease that ran out under a live worker) is committed by at most one of them.

A worker loops: ``claim`` → crawl, ``renew`` every fraction of the lease (stop and discard the attempt when it
returns False: another worker owns the shard now) → commit in the store → ``ack``. On SIGTERM it ``release``s.

Key layout (``refwatch`` is the namespace; ``<run>`` a plain run id, see ``shard_model.check_name``)::

    refwatch:runs                    ZSET    active runs; score = Redis TIME (µs) of the first put_run
    refwatch:run:<run>:meta          HASH    spec (JSON), state, created_us, updated_us
    refwatch:run:<run>:shards        STREAM  one entry per enqueued shard {run_id, shard_id}; group "workers"
    refwatch:run:<run>:enqueued      SET     shard ids ever enqueued (seeding again adds only the others)
    refwatch:run:<run>:done          SET     shard ids acked
    refwatch:run:<run>:dead          SET     shard ids dead-lettered and not acked since
    refwatch:run:<run>:deadletters   STREAM  {run_id, shard_id, entry_id, deliveries, last_consumer}
    refwatch:run:<run>:finalizer     STRING  consumer holding the end-of-run pass (PX expiry)

No stream is ever trimmed and no key expires except the finalizer lock: a run's keys stay until someone
deletes them. Every multi-step change runs in one Lua script (``shard_scripts.py``), so it is atomic. A run's keys carry no hash tag: this is for one Redis (with a replica), not Redis Cluster.

Leases are the consumer group's own idle times (milliseconds since the entry was last delivered or claimed,
measured by the Redis server's clock): a worker's clock never decides anything. An entry idle for at least
``lease_seconds`` belongs to a dead worker and is taken over by the next ``claim``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from typing import Any

import redis

from crawler.coordination.shard_model import (
    GROUP,
    PARKING_CONSUMER,
    Claim,
    DeadLetter,
    RunKeys,
    RunState,
    ShardCounts,
    check_name,
    run_keys,
    runs_key,
    shard_counts,
    shards_to_enqueue,
)
from crawler.coordination.shard_scripts import SCRIPTS

__all__ = ["Claim", "DeadLetter", "RunState", "ShardCounts", "ShardQueue"]

logger = logging.getLogger(__name__)

#: Shards per enqueue script: each call is atomic, and a bounded batch keeps Redis responsive.
_ENQUEUE_BATCH = 500
#: The longest a blocking claim waits in one XREADGROUP before it looks for runs and lapsed leases again.
_WAIT_SLICE_MS = 1000
#: Lapsed entries one claim may dead-letter before it moves on (keeps one script call short).
_STALE_SCAN = 64
#: Idle time given to a released entry: far past any lease, and well below "now" (Redis would treat an idle
#: time reaching back before 1970 as bogus and reset it to 0).
_RELEASED_IDLE_MS = 365 * 24 * 3600 * 1000


def _text(value: Any) -> str:
    """A reply as text, whether or not the client was made with ``decode_responses``."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _fields(fields: dict[Any, Any]) -> dict[str, str]:
    return {_text(key): _text(value) for key, value in fields.items()}


class ShardQueue:
    """Runs and their shards in one Redis, under ``namespace``. Safe to share between threads (a heartbeat
    thread renews while the main thread claims): redis-py's client is."""

    def __init__(self, client: redis.Redis, *, namespace: str = "refwatch", lease_seconds: float = 120.0,
                 max_deliveries: int = 5) -> None:
        if not lease_seconds >= 0.001:
            raise ValueError(f"lease_seconds must be at least 0.001 (Redis counts idle time in ms), "
                             f"not {lease_seconds!r}")
        if max_deliveries < 1:
            raise ValueError(f"max_deliveries must be at least 1, not {max_deliveries!r}")
        self.client = client
        self.namespace = check_name("namespace", namespace)
        self.lease_ms = int(lease_seconds * 1000)
        self.max_deliveries = max_deliveries
        self._runs_key = runs_key(namespace)
        self._scripts = {name: client.register_script(source) for name, source in SCRIPTS.items()}

    @property
    def lease_seconds(self) -> float:
        return self.lease_ms / 1000.0

    @classmethod
    def from_url(cls, url: str, **options: Any) -> ShardQueue:
        """A queue on ``redis://host:port/db`` (or ``rediss://``, ``unix://``); ``options`` go to ``__init__``."""
        return cls(redis.Redis.from_url(url, decode_responses=True), **options)

    def _keys(self, run_id: str) -> RunKeys:
        return run_keys(self.namespace, run_id)

    def _run(self, script: str, keys: list[str], args: list[Any]) -> Any:
        return self._scripts[script](keys=keys, args=args)

    # -- runs ------------------------------------------------------------------------------------------------

    def put_run(self, run_id: str, spec: dict[str, Any]) -> None:
        """Store the settings every worker crawls ``run_id`` with and make it active (state ``running``).
        Seeding again replaces the spec and keeps the run's place among the active runs."""
        keys = self._keys(run_id)
        self._run("put_run", [keys.meta, self._runs_key, keys.shards],
                  [json.dumps(spec, sort_keys=True), run_id, GROUP])

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        spec = self.client.hget(self._keys(run_id).meta, "spec")
        return None if spec is None else json.loads(spec)

    def active_runs(self) -> list[str]:
        """Runs workers claim from, oldest first (by Redis time of their first ``put_run``)."""
        return [_text(run_id) for run_id in self.client.zrange(self._runs_key, 0, -1)]

    def state(self, run_id: str) -> RunState | None:
        value = self.client.hget(self._keys(run_id).meta, "state")
        return None if value is None else RunState(_text(value))

    def set_state(self, run_id: str, state: RunState | str) -> None:
        """Move a run on; ``finished`` and ``failed`` take it off the active runs (workers stop claiming)."""
        state = RunState(state)
        keys = self._keys(run_id)
        if not self._run("set_state", [keys.meta, self._runs_key], [state.value, run_id, int(state.active)]):
            raise KeyError(f"run {run_id!r} is not in the shard queue (put_run first)")

    def try_finalize(self, run_id: str, consumer: str, lease_seconds: float) -> bool:
        """Take (or, for the holder, renew) the run's end-of-run pass for ``lease_seconds``; True for exactly one
        consumer at a time, and for none once the run is finished or failed. Granting sets state
        ``finalizing``. The pass must still be idempotent: a holder that dies is replaced after its lease."""
        keys = self._keys(run_id)
        return bool(self._run("try_finalize", [keys.finalizer, keys.meta],
                              [check_name("consumer", consumer), int(lease_seconds * 1000)]))

    def end_finalize(self, run_id: str, consumer: str) -> bool:
        """Give up the end-of-run pass (it failed and another worker may try at once); False if not held."""
        return bool(self._run("end_finalize", [self._keys(run_id).finalizer], [consumer]))

    # -- shards ----------------------------------------------------------------------------------------------

    def enqueue(self, run_id: str, shard_ids: Iterable[str], skip: Iterable[str] = ()) -> int:
        """Add one stream entry per shard not enqueued before and not in ``skip`` (committed); returns how many.
        Seeding the same run again is therefore harmless, and after a lost Redis it re-plans the rest."""
        keys = self._keys(run_id)
        wanted = shards_to_enqueue(tuple(shard_ids), frozenset(skip))
        added = 0
        for start in range(0, len(wanted), _ENQUEUE_BATCH):
            batch = wanted[start:start + _ENQUEUE_BATCH]
            added += int(self._run("enqueue", [keys.shards, keys.enqueued], [GROUP, run_id, *batch]))
        logger.info("run %s: %d of %d shards enqueued", run_id, added, len(wanted))
        return added

    def claim(self, consumer: str, *, block_ms: int = 0) -> Claim | None:
        """The next shard for ``consumer``: first one whose holder's lease ran out, then a new one, over all
        active runs (oldest run first). Waits up to ``block_ms`` for one (0: do not wait); None if none came."""
        check_name("consumer", consumer)
        deadline = time.monotonic() + block_ms / 1000
        while True:
            runs = self.active_runs()
            found = self._take_over_any(consumer, runs) or self._read_new_any(consumer, runs)
            wait_ms = int((deadline - time.monotonic()) * 1000)
            if found is not None or wait_ms <= 0:
                return found
            wait_ms = min(wait_ms, self.lease_ms, _WAIT_SLICE_MS)
            if not runs:
                time.sleep(wait_ms / 1000)
            elif (found := self._read_new_any(consumer, runs, block_ms=wait_ms)) is not None:
                return found

    def _take_over_any(self, consumer: str, runs: list[str]) -> Claim | None:
        for run_id in runs:
            keys = self._keys(run_id)
            entry_id, shard_id, deliveries, *dead = self._run(
                "take_over", [keys.shards, keys.deadletters, keys.dead],
                [GROUP, consumer, self.lease_ms, self.max_deliveries, run_id, _STALE_SCAN])
            for shard in dead:
                logger.warning("run %s: shard %s dead-lettered (max_deliveries %d reached)", run_id, _text(shard),
                               self.max_deliveries)
            if entry_id:
                logger.info("run %s: shard %s taken over by %s (delivery %d)", run_id, _text(shard_id), consumer,
                            deliveries)
                return Claim(run_id, _text(shard_id), _text(entry_id), consumer, int(deliveries))
        return None

    def _read_new_any(self, consumer: str, runs: list[str], block_ms: int | None = None) -> Claim | None:
        """A never-delivered entry. Without ``block_ms``, one stream at a time so at most one entry is taken;
        a blocking read watches all streams, and any extra entry it brings is parked back at once."""
        streams = {self._keys(run_id).shards: run_id for run_id in runs}
        groups = [{key: ">"} for key in streams] if block_ms is None else [dict.fromkeys(streams, ">")]
        for group in groups:
            try:
                replies = self.client.xreadgroup(GROUP, consumer, group, count=1, block=block_ms)
            except redis.ResponseError as error:  # a stream lost with its group: skip it until seeded again
                if "NOGROUP" not in str(error):
                    raise
                logger.warning("shard stream without its group (lost?): %s", error)
                if block_ms is not None:
                    time.sleep(block_ms / 1000)  # the blocking read failed at once: wait as it would have
                continue
            claims = [Claim(streams[_text(key)], _fields(fields).get("shard_id", ""), _text(entry_id), consumer, 1)
                      for key, entries in (replies or []) for entry_id, fields in entries]
            if claims:
                claims.sort(key=lambda c: runs.index(c.run_id))
                for extra in claims[1:]:
                    self.release(extra)
                return claims[0]
        return None

    def renew(self, claim: Claim) -> bool:
        """The heartbeat: restart the lease if the entry is still pending and owned by ``claim.consumer``
        (XCLAIM JUSTID resets its idle time without counting a delivery). False means another worker took the
        shard over (or it was acked, released or dead-lettered): stop and discard the attempt."""
        keys = self._keys(claim.run_id)
        return bool(self._run("renew", [keys.shards], [GROUP, claim.consumer, claim.entry_id]))

    def ack(self, claim: Claim) -> bool:
        """The shard is done: call only after its commit marker exists in the output store. Acks the entry
        whoever holds it now (the store decided which attempt counts; that holder's ``renew`` then returns
        False) and counts the shard done once. Returns False when the entry was no longer pending (acked or dead-lettered already)."""
        keys = self._keys(claim.run_id)
        return bool(self._run("ack", [keys.shards, keys.done, keys.dead], [GROUP, claim.entry_id, claim.shard_id]))

    def release(self, claim: Claim) -> bool:
        """Give the shard back now (the worker is stopping and will not finish it); False if it was not ours.

        The entry is XCLAIMed to a parking consumer no worker can be named (``~released``), with an idle time
        far past any lease, so the next ``claim`` anywhere takes it over at once. Why this is safe: the entry
        never leaves the group's pending list (no moment where the shard is in neither the stream nor the
        list, and its entry id, ``enqueued`` and ``done`` records stay as they are); the releasing worker no
        longer owns it, so its ``renew`` returns False if it carries on by mistake, and the create-only commit
        marker settles any race. The delivery count goes back by one (RETRYCOUNT): a shutdown is not a failed
        attempt, so ``max_deliveries`` still counts crashes and lapsed leases only."""
        keys = self._keys(claim.run_id)
        return bool(self._run("release", [keys.shards],
                              [GROUP, claim.consumer, claim.entry_id, PARKING_CONSUMER, _RELEASED_IDLE_MS]))

    # -- reading ---------------------------------------------------------------------------------------------

    def counts(self, run_id: str) -> ShardCounts:
        """The run's shards by where they are, read at one instant."""
        keys = self._keys(run_id)
        enqueued, unacked, parked, done, dead = self._run(
            "counts", [keys.enqueued, keys.done, keys.dead, keys.shards], [GROUP, PARKING_CONSUMER])
        return shard_counts(int(enqueued), int(unacked), int(parked), int(done), int(dead))

    def dead_letters(self, run_id: str) -> list[DeadLetter]:
        """The run's dead letters, oldest first; ``at_ms`` is when (Redis time, from the entry id)."""
        letters = []
        for entry_id, fields in self.client.xrange(self._keys(run_id).deadletters):
            f = _fields(fields)
            entry_id = _text(entry_id)
            letters.append(DeadLetter(run_id=f["run_id"], shard_id=f["shard_id"], entry_id=f["entry_id"],
                                      deliveries=int(f["deliveries"]), last_consumer=f["last_consumer"],
                                      at_ms=int(entry_id.split("-")[0])))
        return letters
