"""The words of the shard queue (``crawler/coordination/shardqueue.py``): run states, a claim, a run's counts, a
dead letter, and the Redis key names of a run.

Plain values and pure functions, kept apart from the Redis calls so the worker (and its tests) can use them
without a server, and so the key layout is written down in one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

#: Run ids and consumer names go into Redis keys and stream fields: a short, plain alphabet keeps the key
#: layout unambiguous (no ``:``) and keeps anything URL-like or secret-looking out of Redis.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")

#: The consumer a released entry is parked with (``ShardQueue.release``). It starts with ``~``, which
#: ``check_name`` refuses, so no worker can ever own it.
PARKING_CONSUMER = "~released"

#: The one consumer group of every run's stream.
GROUP = "workers"


class RunState(StrEnum):
    """Where a run is. ``running`` and ``finalizing`` runs are active (workers claim from them); a
    ``finished`` or ``failed`` run is not."""

    RUNNING = "running"
    FINALIZING = "finalizing"
    FINISHED = "finished"
    FAILED = "failed"

    @property
    def active(self) -> bool:
        return self in (RunState.RUNNING, RunState.FINALIZING)


@dataclass(frozen=True, slots=True)
class Claim:
    """One delivery of a shard to one consumer. ``deliveries`` counts this one (1 = first delivery; more means
    an earlier holder's lease ran out). The worker renews, acks or releases with this value."""

    run_id: str
    shard_id: str
    entry_id: str
    consumer: str
    deliveries: int


@dataclass(frozen=True, slots=True)
class ShardCounts:
    """A run's shards, each in exactly one of the last four groups.

    ``pending``: not handed out yet (or released and waiting); ``in_flight``: held by a worker (live or with a
    lapsed lease not yet taken over); ``done``: acked after a commit; ``dead``: dead-lettered and never acked.
    """

    enqueued: int
    pending: int
    in_flight: int
    done: int
    dead: int

    @property
    def settled(self) -> bool:
        """Every enqueued shard is done or dead: the end-of-run pass may start."""
        return self.pending == 0 and self.in_flight == 0


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A shard given up on after ``deliveries`` deliveries; ``at_ms`` is Redis server time."""

    run_id: str
    shard_id: str
    entry_id: str
    deliveries: int
    last_consumer: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class RunKeys:
    """The Redis keys of one run (the layout is drawn in ``shardqueue``'s docstring)."""

    meta: str
    shards: str
    enqueued: str
    done: str
    dead: str
    deadletters: str
    finalizer: str


def check_name(kind: str, value: str) -> str:
    """``value`` if it is a plain name fit for a key or a consumer, else ``ValueError`` naming it."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError(f"{kind} {value!r} is not a plain name (letters, digits, '.', '_', '@', '-'; "
                         f"at most 128; not starting with punctuation)")
    return value


def runs_key(namespace: str) -> str:
    return f"{namespace}:runs"


def run_keys(namespace: str, run_id: str) -> RunKeys:
    base = f"{namespace}:run:{check_name('run id', run_id)}"
    return RunKeys(meta=f"{base}:meta", shards=f"{base}:shards", enqueued=f"{base}:enqueued",
                   done=f"{base}:done", dead=f"{base}:dead", deadletters=f"{base}:deadletters",
                   finalizer=f"{base}:finalizer")


def shards_to_enqueue(shard_ids: list[str] | tuple[str, ...], skip: set[str] | frozenset[str]) -> list[str]:
    """The shard ids to offer Redis, in plan order, once each, without the committed ones (``skip``)."""
    seen: set[str] = set()
    wanted = []
    for shard_id in shard_ids:
        if not isinstance(shard_id, str) or not shard_id:
            raise ValueError(f"shard id {shard_id!r} is not a non-empty string")
        if shard_id not in skip and shard_id not in seen:
            seen.add(shard_id)
            wanted.append(shard_id)
    return wanted


def shard_counts(enqueued: int, delivered_unacked: int, parked: int, done: int, dead: int) -> ShardCounts:
    """Counts from what Redis holds: pending is what is neither held, done nor dead; a parked (released) entry
    is still in the group's pending list but waits for a worker, so it counts as pending."""
    in_flight = max(delivered_unacked - parked, 0)
    return ShardCounts(enqueued=enqueued, pending=max(enqueued - in_flight - done - dead, 0),
                       in_flight=in_flight, done=done, dead=dead)
