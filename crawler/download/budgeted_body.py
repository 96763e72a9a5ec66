"""The body budget (``crawler/download/body_budget.py``) on Twisted: one budget per crawl, a body protocol that
counts what Scrapy's reader receives and pauses its transport, and the hand-over of a finished body's bytes.

* ``budget_for(crawler)``: the crawl's one ``BodyBudget`` (``REFWATCH_BODY_BUDGET`` bytes; 0: none), shared by
  the http and https handlers (Scrapy builds one handler per scheme), its stats set when the spider closes.
* ``BudgetedBody`` sits between Twisted's response and Scrapy's ``_ResponseReader``: each delivery is counted
  before the reader stores it, and a refused download's transport is paused (``pauseProducing``: its socket
  is no longer read) until the budget resumes it. A pause asked for while Twisted hands over the bytes that
  came with the head is applied after ``deliverBody`` returns, which resumes the transport itself.
* Time spent paused does not count towards the download timeout, up to one more timeout in all: an honest
  image waiting for bodies to be hashed is not turned into ``timeout``, and no download, hostile or not, holds
  its slot longer than twice ``--timeout``.
* A finished body's bytes are held until it is dropped: ``hand_over`` puts a release callable in the request's
  meta (``BODY_RELEASE_META``, called by the hashing middleware once the body is hashed or not wanted) and
  releases them anyway when the response object is freed (a redirect, a retried status, a decompressed or
  failed body: whatever drops the response). A failed download's bytes are released by the handler.

Private names relied on: none here (Scrapy's ``_ResponseReader`` is wrapped as any ``IProtocol``; the handler
reaches it, see ``crawler/download/handler.py``).
"""

from __future__ import annotations

import gc
import logging
import weakref
from typing import TYPE_CHECKING, Any

from scrapy import signals
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.python.threadable import isInIOThread

from crawler.download.body_budget import BodyBudget, BodyHold

if TYPE_CHECKING:
    from collections.abc import Callable

    from scrapy import Request, Spider
    from scrapy.crawler import Crawler
    from scrapy.http import Response

logger = logging.getLogger(__name__)

#: Meta key of a zero-argument callable giving a response body's bytes back to the budget (idempotent).
BODY_RELEASE_META = "refwatch_body_release"

# Stats keys, set when the spider closes: pauses for the budget and their total seconds, the most body bytes
# held at once, downloads let on alone past a budget smaller than --max-bytes, and bytes still held at the end
# (0 unless a body leaked).
BODY_WAITS = "refwatch/body_budget/waits"
BODY_WAIT_SECONDS = "refwatch/body_budget/wait_seconds"
BODY_PEAK_BYTES = "refwatch/body_budget/peak_bytes"
BODY_ALONE = "refwatch/body_budget/alone"
BODY_HELD_AT_CLOSE = "refwatch/body_budget/held_at_close"

#: The budget when the setting is absent (settings not from crawler.settings): the shipped default.
DEFAULT_BODY_BUDGET = 96 * 1024 * 1024


class _CrawlBudget:
    """A crawl's budget and the receiver that reports it (Scrapy's signals hold receivers weakly)."""

    def __init__(self, crawler: Crawler, budget: BodyBudget) -> None:
        self.crawler = crawler
        self.budget = budget

    def spider_closed(self, spider: Spider) -> None:
        if self.crawler.stats is None:
            return
        # A body kept only by a reference cycle (a failure's traceback holding its response) is freed, and
        # released, by the collector; what is still held after it is a leak.
        gc.collect()
        seen = self.budget.stats()
        self.crawler.stats.set_value(BODY_WAITS, seen.waits)
        self.crawler.stats.set_value(BODY_WAIT_SECONDS, round(seen.wait_seconds, 3))
        self.crawler.stats.set_value(BODY_PEAK_BYTES, seen.peak_bytes)
        self.crawler.stats.set_value(BODY_ALONE, seen.alone)
        self.crawler.stats.set_value(BODY_HELD_AT_CLOSE, seen.held)


_budgets: weakref.WeakKeyDictionary[Any, _CrawlBudget] = weakref.WeakKeyDictionary()


def budget_for(crawler: Crawler) -> BodyBudget | None:
    """The crawl's body budget, made on first use; ``None`` when ``REFWATCH_BODY_BUDGET`` is 0."""
    found = _budgets.get(crawler)
    if found is None:
        settings = crawler.settings
        capacity = settings.getint("REFWATCH_BODY_BUDGET", DEFAULT_BODY_BUDGET)
        if capacity <= 0:
            return None
        budget = BodyBudget(capacity, max_body=max(0, settings.getint("DOWNLOAD_MAXSIZE")),
                            downloads=max(1, settings.getint("CONCURRENT_REQUESTS")))
        if not budget.keeps_room:
            logger.info("REFWATCH_BODY_BUDGET (%d bytes) is smaller than one body at DOWNLOAD_MAXSIZE plus a read "
                        "for each of CONCURRENT_REQUESTS: a body that does not fit is downloaded alone", capacity)
        found = _budgets[crawler] = _CrawlBudget(crawler, budget)
        crawler.signals.connect(found.spider_closed, signal=signals.spider_closed)
    return found.budget


class BudgetedBody(Protocol):
    """Scrapy's body reader behind a budget: counts each delivery, pauses and resumes the transport."""

    def __init__(self, reader: Protocol, budget: BodyBudget, expected: int | None,
                 extend_timeout: Callable[[float], None], timeout: float) -> None:
        self.reader = reader
        self._extend_timeout = extend_timeout
        self._extension_left = timeout
        self._delivering = True  # until deliverBody returns (it resumes the transport at its end)
        self.hold: BodyHold = budget.open(self._pause, self._resume, expected)

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        self.reader.makeConnection(transport)

    def delivered(self) -> None:
        """``deliverBody`` returned: apply a pause asked for while it ran."""
        self._delivering = False
        if self.hold.paused:
            self._pause()

    def dataReceived(self, data: bytes) -> None:
        self.hold.arrived(len(data))
        self.reader.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.hold.finish()  # before the reader: its Deferred may run the rest of the download at once
        self.reader.connectionLost(reason)

    def _pause(self) -> None:
        if not self._delivering and self.transport is not None:
            self.transport.pauseProducing()

    def _resume(self, waited: float) -> None:
        if not self._delivering and self.transport is not None:
            self.transport.resumeProducing()
        extension = min(waited, self._extension_left)
        if extension > 0:
            self._extension_left -= extension
            self._extend_timeout(extension)


def hand_over(hold: BodyHold, request: Request, response: Response) -> None:
    """A finished body goes on in ``response``: its bytes are given back by whoever drops it first, the hashing
    middleware (``BODY_RELEASE_META``) or the garbage collector (the response freed)."""
    request.meta[BODY_RELEASE_META] = hold.release
    finalizer = weakref.finalize(response, _release_in_reactor, hold)
    finalizer.atexit = False


def _release_in_reactor(hold: BodyHold) -> None:
    """Release from a finalizer, which runs in whatever thread dropped the response: the budget and the
    transports it resumes belong to the reactor thread."""
    if isInIOThread():
        hold.release()
    else:
        from twisted.internet import reactor

        reactor.callFromThread(hold.release)  # type: ignore[attr-defined]
