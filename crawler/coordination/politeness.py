"""Politeness shared by every worker of a crawl: per-host slots and back-offs kept in Redis.

Fifty workers each obeying a local per-host limit still hammer a host fifty times over. Here a host's slots
are one sorted set for the whole fleet: each member is a request's token, scored with the moment its lease
ends, so the slots of a worker that dies come back when their leases run out, without anyone cleaning up.
A host's back-off is one key whose value and expiry are the moment it ends, so it vanishes on its own.

Every moment is Redis's (``TIME`` inside the scripts, ``PTTL`` for what is left), never a worker's clock:
workers on many machines disagree about the time, the one Redis does not. Each decision is one Lua script,
so it is atomic: taking a slot also checks the back-off, so no worker gets a slot for a host another
worker has just backed off. A refused worker is listed as waiting for the host for a moment, so that the
workers holding its slots know whether anyone else wants them. Keys (hosts appear in keys only, never in
logs above DEBUG): ``refwatch:polite:<scope>:host:{<host>}`` (slots), ``...:backoff:{<host>}``,
``...:waiting:{<host>}`` (workers, scored with the end of their listing).

Plain blocking ``redis`` calls: the Scrapy middleware (``middlewares/shared_politeness.py``) runs them in
threads. Correctness never depends on Redis keeping these keys: losing them only loses politeness for a
lease's time.
"""

from __future__ import annotations

import itertools
import os
import random
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis


KEY_PREFIX = "refwatch:polite"

# Redis's own clock, in milliseconds; and a sorted set scored with expiry moments lives as long as its
# latest one, so nothing is left behind.
_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function expire_with_last(key)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if last[2] then redis.call('PEXPIREAT', key, tonumber(last[2])) end
end
"""

# KEYS: slots, back-off, waiting workers. ARGV: limit, lease ms, token, worker, waiting ttl ms, still waiting.
# -> {1, n, others}: slot taken, n left free; {0, 0, others}: full; {-1, ms, others}: backed off for ms more.
# ``others``: how many other workers wait for this host. A refused worker is listed as waiting for a ttl
# (each refusal renews it); one that got its slot stays listed only if it has more requests waiting.
_ACQUIRE = _PRELUDE + """
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local listed = redis.call('ZSCORE', KEYS[3], ARGV[4])
local others = redis.call('ZCARD', KEYS[3]) - (listed and 1 or 0)
local function refuse(status, value)
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[5]), ARGV[4])
  expire_with_last(KEYS[3])
  return {status, value, others}
end
local backoff = redis.call('PTTL', KEYS[2])
if backoff > 0 then return refuse(-1, backoff) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local taken = redis.call('ZCARD', KEYS[1])
if taken >= tonumber(ARGV[1]) then return refuse(0, 0) end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
expire_with_last(KEYS[1])
if listed and ARGV[6] == '0' then redis.call('ZREM', KEYS[3], ARGV[4]) end
return {1, tonumber(ARGV[1]) - taken - 1, others}
"""

# KEYS: slots. ARGV: lease ms, tokens... -> the tokens whose lease had already run out (not renewed).
_RENEW = _PRELUDE + """
local lost = {}
for i = 2, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) > now then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[i])
  else
    table.insert(lost, ARGV[i])
  end
end
expire_with_last(KEYS[1])
return lost
"""

# KEYS: back-off. ARGV: ms from now. Only ever moves the end forward. -> ms of back-off left.
_PUSH_BACKOFF = """
local current = redis.call('PTTL', KEYS[1])
local wanted = tonumber(ARGV[1])
if current >= wanted then return current end
if wanted <= 0 then return 0 end
""" + _PRELUDE + """
redis.call('SET', KEYS[1], now + wanted, 'PXAT', now + wanted)
return wanted
"""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try at a host: a slot's token (and how many were left free), or why not (backed off for
    ``backoff`` seconds, or full); and whether other workers are waiting for it too."""

    token: str | None
    backoff: float = 0.0
    free: int = 0
    others_waiting: int = 0  # other workers waiting for this host

    @property
    def full(self) -> bool:
        return self.token is None and self.backoff <= 0.0


def poll_delay(tries: int, minimum: float, maximum: float, rng: random.Random | None = None) -> float:
    """Pause before the next try at a full host: doubling from ``minimum`` to ``maximum``, half of it random
    ("equal jitter") so that the workers waiting for one host do not all knock at the same instant."""
    base = min(maximum, minimum * 2 ** min(tries, 30))
    return base / 2 + (rng or random).uniform(0.0, base / 2)


class SharedPoliteness:
    """Per-host slots and back-offs in one Redis, for every worker that names the same ``scope``."""

    def __init__(self, client: redis.Redis, scope: str, prefix: str = KEY_PREFIX) -> None:
        self.client = client
        self.namespace = f"{prefix}:{scope}"
        # Tokens name their worker (debugging a full host: who holds it?) and are unique fleet-wide.
        self.worker_id = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._serial = itertools.count(1)  # next() on a count is atomic under the GIL: threads may share it
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._push_backoff = client.register_script(_PUSH_BACKOFF)

    @classmethod
    def from_url(cls, url: str, scope: str, timeout: float = 2.0) -> SharedPoliteness:
        """A client that fails fast: a Redis that does not answer within ``timeout`` is treated as down by
        the caller. One retry without delay re-dials a pooled connection that a Redis restart broke."""
        import redis  # here: a crawl without Redis never loads its client (~0.12 s)
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                      retry=Retry(NoBackoff(), 1))
        return cls(client, scope)

    # The host in braces is a Redis Cluster hash tag: a host's three keys live on one node, as a script that
    # touches them needs, and hosts spread over the nodes.
    def slots_key(self, host: str) -> str:
        return f"{self.namespace}:host:{{{host}}}"

    def backoff_key(self, host: str) -> str:
        return f"{self.namespace}:backoff:{{{host}}}"

    def waiting_key(self, host: str) -> str:
        return f"{self.namespace}:waiting:{{{host}}}"

    def try_acquire(self, host: str, limit: int, lease_seconds: float, waiting_ttl: float = 2.0,
                    still_waiting: bool = False) -> Attempt:
        """Take one of ``limit`` slots of ``host`` for ``lease_seconds``, unless it is full or backed off.

        A refusal lists this worker as waiting for the host for ``waiting_ttl`` seconds; ``still_waiting``
        keeps it listed after a success (it has more requests waiting)."""
        token = f"{self.worker_id}:{next(self._serial)}"
        status, value, others = self._acquire(
            keys=[self.slots_key(host), self.backoff_key(host), self.waiting_key(host)],
            args=[limit, _ms(lease_seconds), token, self.worker_id, _ms(waiting_ttl), int(still_waiting)])
        if status == 1:
            return Attempt(token, free=int(value), others_waiting=int(others))
        return Attempt(None, backoff=value / 1000.0 if status == -1 else 0.0, others_waiting=int(others))

    def acquire(self, host: str, limit: int, lease_seconds: float) -> str | None:
        """A slot's token, or None when the host is full or backed off."""
        return self.try_acquire(host, limit, lease_seconds).token

    def release(self, host: str, token: str) -> bool:
        """Give a slot back; False if its lease had already run out (then it was back already)."""
        return bool(self.client.zrem(self.slots_key(host), token))

    def renew(self, held: Mapping[str, Collection[str]], lease_seconds: float) -> dict[str, list[str]]:
        """Extend the leases of the tokens held, by host, in one round trip; returns the tokens whose leases
        had run out before this (their slots may have gone to someone else)."""
        hosts = [host for host, tokens in held.items() if tokens]
        if not hosts:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for host in hosts:
            self._renew(keys=[self.slots_key(host)], args=[_ms(lease_seconds), *held[host]], client=pipe)
        lost = pipe.execute()
        return {host: [t.decode() if isinstance(t, bytes) else t for t in gone]
                for host, gone in zip(hosts, lost, strict=True) if gone}

    def holders(self, host: str) -> int:
        """Slots of ``host`` taken now, by every worker (leases that ran out do not count)."""
        now_s, now_us = self.client.time()
        return int(self.client.zcount(self.slots_key(host), f"({now_s * 1000 + now_us // 1000}", "+inf"))

    def push_backoff(self, host: str, until_seconds: float) -> float:
        """Back ``host`` off for ``until_seconds`` from now, unless it already is for longer; returns the
        seconds of back-off now left."""
        return int(self._push_backoff(keys=[self.backoff_key(host)], args=[_ms(until_seconds)])) / 1000.0

    def backoff_remaining(self, host: str) -> float:
        """Seconds until ``host`` may be contacted again (0.0: now)."""
        return max(0, int(self.client.pttl(self.backoff_key(host)))) / 1000.0

    def close(self) -> None:
        self.client.close()


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))
