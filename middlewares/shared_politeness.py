"""Per-host limits and back-offs shared by every worker of a crawl, through Redis (issue 11).

Only with ``REFWATCH_REDIS_URL`` set (otherwise ``NotConfigured``: a one-machine crawl pays nothing). Before
a request goes out it takes one of the host's ``REFWATCH_SHARED_PER_HOST`` fleet-wide slots
(``crawler.coordination.politeness``), waiting while the host is backed off or full; the slot goes back when
the response or the exception comes back. A 429/503 pushes the host's shared back-off (its ``Retry-After``,
capped by ``REFWATCH_BACKOFF_MAX_SECONDS``, as the local ``HostBackoffMiddleware`` does) *before* its slot
goes back, and taking a slot checks the back-off in the same script, so no worker slips in between.
Scrapy's ``CONCURRENT_REQUESTS_PER_DOMAIN`` stays as the second, local fence.

Its place (see ``DOWNLOADER_MIDDLEWARES``): last before the download, so its ``process_response`` and
``process_exception`` run first on the way back and no other middleware (retry, redirect) can turn the answer
into a new request before the slot is released; a retry or redirect then takes a slot of its own.

Redis calls block, so they run in a small thread pool (middlewares/politeness_redis.py); a request costs two
of them (take, give back) and the give-back does not wait for its answer. Requests that find their host full
wait in a line per host, whose head alone polls Redis (bounded, jittered). When no other worker waits for that
host, a slot this worker gives back wakes its head at once (a lone worker keeps the host's slots busy); when
others wait, every worker's head polls alike, so the slots go round instead of staying with the worker that
holds them. While waiting, a request counts as active in its Scrapy downloader slot, so
DownloaderAwarePriorityQueue feeds other hosts first. Held slots are renewed every third of their lease, so a
download (or a wait in Scrapy's local queue) longer than the lease keeps its slot, while a killed worker's
slots come back within one lease. When Redis fails (down, unreachable, too slow), one WARNING says so,
requests go out under the local limit only (counted as ``unguarded``) and Redis is tried again after
``REFWATCH_POLITENESS_RETRY_REDIS`` seconds: a Redis outage costs politeness, never references; slots whose
release failed meanwhile are given back once it answers. A graceful stop drains waiting requests as Scrapy
drains its own queues: they still wait for their slot.

Stats: ``refwatch/politeness/waits`` (requests that had to wait), ``.../wait_seconds`` (their total wait),
``.../backoffs`` (shared back-offs this worker pushed), ``.../unguarded`` (requests sent without a shared
slot because Redis was down), ``.../redis_errors``, ``.../leases_lost`` (slots that ran out while held).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from scrapy import Spider, signals
from scrapy.crawler import Crawler
from scrapy.exceptions import NotConfigured
from scrapy.http import Request, Response
from scrapy.utils.defer import maybe_deferred_to_future
from scrapy.utils.httpobj import urlparse_cached
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall

from crawler.coordination.politeness import Attempt, SharedPoliteness, poll_delay
from middlewares.backoff import BACKOFF_STATUSES, parse_retry_after

logger = logging.getLogger(__name__)

SLOT_META = "refwatch_politeness_slot"  # (host, token) of the shared slot a request holds

WAITS = "refwatch/politeness/waits"
WAIT_SECONDS = "refwatch/politeness/wait_seconds"
BACKOFFS = "refwatch/politeness/backoffs"
UNGUARDED = "refwatch/politeness/unguarded"

POLL_MIN = 0.05  # the first pause at a full host; doubles up to REFWATCH_POLITENESS_POLL_MAX


class SharedPolitenessMiddleware:
    def __init__(self, crawler: Crawler, politeness: SharedPoliteness, per_host: int, lease: float,
                 poll_max: float, retry_redis: float, backoff_max: float, backoff_default: float) -> None:
        self.crawler = crawler
        self.politeness = politeness
        # Imported here, not at the top: it imports Redis's client, which a crawl without Redis (Scrapy imports
        # this middleware even when it is not configured) would load for nothing, ~0.12 s of start-up.
        from middlewares.politeness_redis import PolitenessRedis, installed_reactor

        self.redis = PolitenessRedis(politeness, retry_redis, self._stats)
        self.reactor = installed_reactor()
        self.per_host = per_host
        self.lease = lease
        self.poll_max = max(POLL_MIN, poll_max)
        self.backoff_max = backoff_max
        self.backoff_default = backoff_default
        self.held: dict[str, set[str]] = {}  # host -> tokens of this worker's requests in flight
        self._lines: dict[str, deque[Deferred[int | None]]] = {}  # host -> this worker's requests waiting
        self._naps: dict[str, tuple[Deferred[None], IDelayedCall]] = {}  # host -> its line's head, asleep
        self._contended: set[str] = set()  # hosts with a line here that other workers wait for too
        self.waiting_ttl = max(2.0, 4 * self.poll_max)  # a waiting head asks at least every poll_max
        self._renewal: task.LoopingCall | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> SharedPolitenessMiddleware:
        settings = crawler.settings
        url = settings.get("REFWATCH_REDIS_URL")
        if not url:
            raise NotConfigured  # no Redis: one machine, its local per-host limit; nothing to warn about
        if not settings.getbool("REFWATCH_SHARED_POLITENESS", True):
            raise NotConfigured  # the run was seeded without it: each crawl keeps its local limits only
        per_host = settings.get("REFWATCH_SHARED_PER_HOST")
        lease = settings.get("REFWATCH_POLITENESS_LEASE")
        scope = settings.get("REFWATCH_POLITENESS_SCOPE") or settings.get("REFWATCH_RUN_ID") or "default"
        per_host = int(per_host) if per_host not in (None, "") else settings.getint("CONCURRENT_REQUESTS_PER_DOMAIN")
        # A download may last the whole timeout: a lease that outlives it keeps the slot even if renewals
        # stall, and a dead worker's slots still come back soon after.
        lease = float(lease) if lease not in (None, "") else settings.getfloat("DOWNLOAD_TIMEOUT") + 10.0
        if per_host < 1 or lease <= 0:
            raise ValueError(f"REFWATCH_SHARED_PER_HOST must be at least 1 (got {per_host}) and "
                             f"REFWATCH_POLITENESS_LEASE more than 0 s (got {lease})")
        middleware = cls(
            crawler,
            SharedPoliteness.from_url(url, scope=str(scope)),
            per_host=per_host,
            lease=lease,
            poll_max=settings.getfloat("REFWATCH_POLITENESS_POLL_MAX"),
            retry_redis=settings.getfloat("REFWATCH_POLITENESS_RETRY_REDIS"),
            backoff_max=settings.getfloat("REFWATCH_BACKOFF_MAX_SECONDS"),
            backoff_default=settings.getfloat("REFWATCH_BACKOFF_DEFAULT_SECONDS"),
        )
        crawler.signals.connect(middleware.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(middleware.spider_closed, signal=signals.spider_closed)
        return middleware

    # --- the downloader middleware ---------------------------------------------------------------------

    async def process_request(self, request: Request) -> None:
        host = urlparse_cached(request).hostname
        if not host:
            return None
        if host in self._lines:  # others here wait for this host already: behind them
            attempt = await self._wait_in_line(request, host, None)
        else:
            attempt = await self._try(host, still_waiting=False)
            if attempt is not None and attempt.token is None:
                attempt = await self._wait_in_line(request, host, attempt)
        if attempt is None:  # Redis down: the local limit alone
            self._stats().inc_value(UNGUARDED)
            return None
        assert attempt.token is not None
        request.meta[SLOT_META] = (host, attempt.token)
        self.held.setdefault(host, set()).add(attempt.token)
        return None

    async def _wait_in_line(self, request: Request, host: str, refused: Attempt | None) -> Attempt | None:
        """Wait for a slot of a full or backed-off host; None if Redis fails meanwhile.

        This worker's waiting requests for a host stand in a line and only its head asks Redis: one poller
        per host and worker however many wait, and they get slots in their order. A head that gets a slot
        hands the line over with the number of slots left, so the next head asks at once only if any are.
        """
        started = time.monotonic()
        waiting_in = self._count_as_active(request)
        line = self._lines.setdefault(host, deque())
        turn: Deferred[int | None] = Deferred()
        line.append(turn)
        attempt = refused
        free_left: int | None = None
        try:
            if len(line) > 1:
                left = await maybe_deferred_to_future(turn)  # the head ahead of this one got its slot
                attempt = Attempt(None) if left == 0 else None  # none left: pause before asking
            tries = 0
            while True:
                if attempt is not None:
                    if attempt.token is not None:
                        free_left = attempt.free
                        return attempt
                    if attempt.full:
                        pause = poll_delay(tries, POLL_MIN, self.poll_max)
                        tries += 1
                    else:  # backed off: sleep it out, plus a little so the fleet does not wake at one instant
                        pause = attempt.backoff + poll_delay(0, self.poll_max, self.poll_max)
                    await self._nap(host, pause)
                attempt = await self._try(host, still_waiting=len(line) > 1)
                if attempt is None:
                    return None
        finally:
            self._leave_line(host, turn, free_left)
            self._stats().inc_value(WAITS)
            self._stats().inc_value(WAIT_SECONDS, time.monotonic() - started)
            if waiting_in is not None:
                waiting_in.discard(request)

    def _leave_line(self, host: str, turn: Deferred[int | None], free_left: int | None) -> None:
        line = self._lines[host]
        if line[0] is turn:
            line.popleft()
            if line:
                line[0].callback(free_left)  # the next request becomes the head
        else:
            line.remove(turn)  # cancelled while waiting for its turn
        if not line and self._lines.get(host) is line:  # (the next head may have left already, re-entrantly)
            del self._lines[host]
            self._contended.discard(host)

    async def _try(self, host: str, still_waiting: bool) -> Attempt | None:
        """One try at a slot (None: Redis down). Notes whether other workers wait for the host: then a slot
        this worker gives back is left to whoever asks first, not handed straight to its own next request."""
        attempt: Attempt | None = await self.redis.call(self.politeness.try_acquire, host, self.per_host, self.lease,
                                                    self.waiting_ttl, still_waiting)
        if attempt is not None and host in self._lines:  # (only lines' hosts: the set stays small)
            if attempt.others_waiting:
                self._contended.add(host)
            else:
                self._contended.discard(host)
        return attempt

    async def _nap(self, host: str, seconds: float) -> None:
        """Sleep on the reactor; a slot this worker gives back for ``host`` ends the nap early."""
        woken: Deferred[None] = Deferred()
        call = self.reactor.callLater(seconds, woken.callback, None)
        self._naps[host] = (woken, call)
        try:
            await maybe_deferred_to_future(woken)
        finally:
            if self._naps.get(host, (None,))[0] is woken:
                del self._naps[host]
            if call.active():
                call.cancel()

    def _wake(self, host: str) -> None:
        nap = self._naps.pop(host, None)
        if nap is not None and nap[1].active():
            nap[1].cancel()
            nap[0].callback(None)

    async def process_response(self, request: Request, response: Response) -> Response:
        if response.status in BACKOFF_STATUSES:
            host = urlparse_cached(request).hostname
            header = response.headers.get(b"Retry-After")
            wait = parse_retry_after(header.decode("latin-1") if header else None)
            seconds = min(self.backoff_max, self.backoff_default if wait is None else wait)
            if host and seconds > 0:
                # Before the slot goes back: whoever takes it next sees the back-off already.
                if await self.redis.call(self.politeness.push_backoff, host, seconds) is not None:
                    self._stats().inc_value(BACKOFFS)
                    logger.debug("shared back-off of %s for %.1f s after %d", host, seconds, response.status)
        self._release(request)
        return response

    def process_exception(self, request: Request, exception: Exception) -> None:
        self._release(request)
        return None

    # --- slots ----------------------------------------------------------------------------------------

    def _release(self, request: Request) -> None:
        """Give the request's slot back; nothing waits for Redis's answer (a lost release costs one lease).
        When this worker has requests waiting for the host, its head tries again once the slot is back.
        The meta key goes too: a retry or redirect copies the meta and must take a slot of its own."""
        slot = request.meta.pop(SLOT_META, None)
        if slot is None:
            return
        host, token = slot
        tokens = self.held.get(host)
        if tokens is not None:
            tokens.discard(token)
            if not tokens:
                del self.held[host]
        if host in self._lines and host not in self._contended:
            self.redis.release(host, token, then=lambda: self._wake(host))
        else:  # nobody to wake (or others' turn): no hop back to the reactor
            self.redis.release(host, token)

    def _renew(self) -> None:
        """Every third of a lease: extend the leases of every slot this worker holds, in one round trip."""
        self.redis.renew({host: list(tokens) for host, tokens in self.held.items()}, self.lease)

    def _count_as_active(self, request: Request) -> set[Request] | None:
        """Show a waiting request in its Scrapy downloader slot's ``active`` set, as if queued there.

        Scrapy's DownloaderAwarePriorityQueue hands out requests of the hosts with the fewest active
        requests; requests waiting here would be invisible to it, so it would keep feeding a full host until
        its waiters fill CONCURRENT_REQUESTS and the other hosts starve. ``Downloader._get_slot`` is private:
        without it, nothing is shown (correct, only less fair).
        """
        try:
            downloader = self.crawler.engine.downloader
        except RuntimeError:  # no engine: not in a crawl (component tests)
            return None
        get_slot: Callable[[Request], tuple[str, Any]] | None = getattr(downloader, "_get_slot", None)
        if get_slot is None:
            return None
        active: set[Request] = get_slot(request)[1].active
        active.add(request)
        return active

    def _stats(self) -> Any:
        assert self.crawler.stats is not None
        return self.crawler.stats

    # --- lifecycle ------------------------------------------------------------------------------------

    def spider_opened(self, spider: Spider) -> None:
        self._renewal = task.LoopingCall(self._renew)
        self._renewal.clock = self.reactor
        self._renewal.start(self.lease / 3, now=False)

    def spider_closed(self, spider: Spider) -> None:
        """Everything has come back by now (Scrapy drains in-flight requests first); anything still held is
        released, best effort, then the threads stop."""
        if self._renewal is not None and self._renewal.running:
            self._renewal.stop()
        self.redis.close(self.held)  # lets queued releases finish
        self.held.clear()
