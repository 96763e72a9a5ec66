"""Shared politeness's Redis calls, made off the reactor, and what happens when Redis fails.

``SharedPolitenessMiddleware`` (middlewares/shared_politeness.py) decides when a request may go out; this is
how it talks to Redis. Redis calls block, so they run in a small thread pool: taking a slot is awaited, giving
one back is not (a lost release costs one lease). When Redis fails (down, unreachable, too slow), one WARNING
says so and no call is tried for ``retry_redis`` seconds (``call`` answers ``None``: the request goes out under
the local limit); slots whose release failed meanwhile are given back once Redis answers again (a restarted
Redis still holds them from its append-only file; their lease frees them otherwise). Held slots are renewed
in one round trip; slots that ran out while held are counted and reported.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError
from scrapy.utils.defer import maybe_deferred_to_future
from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.python.threadpool import ThreadPool

from crawler.coordination.politeness import SharedPoliteness

logger = logging.getLogger(__name__)

REDIS_ERRORS = "refwatch/politeness/redis_errors"
LEASES_LOST = "refwatch/politeness/leases_lost"

THREADS = 4  # Redis calls in flight at once: each takes well under a millisecond on a healthy Redis


class PolitenessRedis:
    def __init__(self, politeness: SharedPoliteness, retry_redis: float, stats: Callable[[], Any]) -> None:
        self.politeness = politeness
        self.retry_redis = retry_redis
        self._stats = stats
        self._unreleased: deque[tuple[str, str]] = deque(maxlen=10_000)  # (host, token) Redis did not take back
        self._down_until = 0.0  # monotonic: Redis is not tried before this
        self._outage = False
        self._renewing = False
        self._pool = ThreadPool(minthreads=1, maxthreads=THREADS, name="refwatch-politeness")
        self._pool.start()

    @property
    def resting(self) -> bool:
        """Redis failed lately: not tried again before ``retry_redis`` seconds have passed."""
        return time.monotonic() < self._down_until

    async def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)`` in a pool thread; None when Redis is down (then not tried until the retry)."""
        if self.resting:
            return None
        d: Deferred[Any] = threads.deferToThreadPool(installed_reactor(), self._pool, function, *args)
        try:
            result = await maybe_deferred_to_future(d)
        except RedisError as exc:
            self._failed(exc)
            return None
        if self._outage:
            self._outage = False
            logger.info("shared politeness: Redis answers again; per-host slots are shared across workers again")
            self._pool.callInThread(self._release_unreleased)
        return result

    def release(self, host: str, token: str, then: Callable[[], None] | None = None) -> None:
        """Give a slot back without waiting for Redis; ``then`` runs on the reactor once Redis has it back
        (without one, nothing hops back to the reactor)."""
        if then is None:
            self._pool.callInThread(self._release_quietly, host, token)
        else:
            released = threads.deferToThreadPool(installed_reactor(), self._pool, self._release_quietly, host,
                                                 token)
            released.addCallback(lambda _: then())

    def renew(self, held: dict[str, list[str]], lease: float) -> None:
        """Extend the leases of ``held`` (host -> tokens), in one round trip; skipped while one is running or
        Redis rests."""
        if self._renewing or not held or self.resting:
            return
        self._renewing = True
        d = threads.deferToThreadPool(installed_reactor(), self._pool, self.politeness.renew, held, lease)
        d.addCallbacks(self._renewed, self._renew_failed)
        d.addBoth(self._renew_done)

    def close(self, held: dict[str, set[str]]) -> None:
        """Give back what is still held (best effort), let queued releases finish, close the connection."""
        for host, tokens in held.items():
            for token in tokens:
                self._pool.callInThread(self._release_quietly, host, token)
        self._pool.stop()
        self.politeness.close()

    # --- in pool threads --------------------------------------------------------------------------------

    def _release_quietly(self, host: str, token: str) -> None:
        try:
            self.politeness.release(host, token)
        except RedisError as exc:
            self._unreleased.append((host, token))
            logger.debug("shared politeness: a slot of %s not released yet (%s)", host, exc)

    def _release_unreleased(self) -> None:
        """Once Redis answers again; stops at the first failure (the next recovery goes on)."""
        for _ in range(len(self._unreleased)):
            try:
                host, token = self._unreleased.popleft()
            except IndexError:
                return
            try:
                self.politeness.release(host, token)
            except RedisError:
                self._unreleased.append((host, token))
                return

    # --- on the reactor ----------------------------------------------------------------------------------

    def _renewed(self, lost: dict[str, list[str]]) -> None:
        count = sum(len(tokens) for tokens in lost.values())
        if count:
            self._stats().inc_value(LEASES_LOST, count)
            logger.warning("shared politeness: %d slots ran out while their requests were still in flight "
                           "(renewals late?); REFWATCH_POLITENESS_LEASE may be too short", count)

    def _renew_failed(self, failure: Any) -> None:
        if failure.check(RedisError):
            self._failed(failure.value)
        else:
            logger.error("shared politeness: renewing slots failed: %s", failure.getTraceback())

    def _renew_done(self, _: Any) -> None:
        self._renewing = False

    def _failed(self, exc: BaseException) -> None:
        self._stats().inc_value(REDIS_ERRORS)
        self._down_until = time.monotonic() + self.retry_redis
        if not self._outage:
            self._outage = True
            logger.warning("shared politeness: Redis failed (%s: %s); requests go out under the local "
                           "per-host limit (CONCURRENT_REQUESTS_PER_DOMAIN) only; trying Redis again every "
                           "%.0f s", type(exc).__name__, exc, self.retry_redis)
        else:
            logger.debug("shared politeness: Redis still failing (%s)", exc)


def installed_reactor() -> Any:
    """The installed reactor, looked up when used: importing this module must not install one."""
    from twisted.internet import reactor

    return reactor
