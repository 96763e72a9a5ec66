"""The crawl's handle on the event queue: opened with the crawl's settings, closed off the reactor.

The queue's writer thread reports each failed write and each written batch; those reports reach the crawl's
stats through the reactor thread (``callFromThread``), never from the writer thread directly, so the stats
(and the metrics read from them) are only touched where Scrapy expects. Stats keys:
``refwatch/events_published`` (events durably written), ``refwatch/queue/batches_written``,
``refwatch/queue/errors`` (failed writes, each retried) and ``refwatch/queue/unwritten_events`` (set when
the crawl ended with events the queue could not take; the CLI then exits 1).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from scrapy.crawler import Crawler
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure

from crawler.events.queue import EventQueue, QueueCloseError, open_queue, queue_options
from crawler.events.event import MatchEvent

logger = logging.getLogger(__name__)


class EventPublisher:
    def __init__(self, crawler: Crawler, url: str) -> None:
        self.crawler = crawler
        self.queue: EventQueue = open_queue(url, **queue_options(crawler.settings),
                                            on_error=self._failed_write, on_written=self._written)

    def publish(self, events: Iterable[MatchEvent]) -> int:
        return self.queue.publish(events)

    def close(self) -> Deferred[None]:
        """Close the queue in a thread (it may retry for ``REFWATCH_QUEUE_CLOSE_TIMEOUT``); record what is lost."""
        closing: Deferred[None] = deferToThread(self.queue.close)
        closing.addErrback(self._not_closed)
        return closing

    def _failed_write(self, exc: BaseException) -> None:
        self._in_reactor(self._inc, "refwatch/queue/errors", 1)

    def _written(self, events: int) -> None:
        self._in_reactor(self._inc, "refwatch/events_published", events)
        self._in_reactor(self._inc, "refwatch/queue/batches_written", 1)

    def _not_closed(self, failure: Failure) -> None:
        failure.trap(QueueCloseError)
        exc = failure.value
        assert isinstance(exc, QueueCloseError)
        logger.error("%s", exc)
        if self.crawler.stats is not None:
            self.crawler.stats.set_value("refwatch/queue/unwritten_events", exc.unwritten)

    def _inc(self, key: str, count: int) -> None:
        if self.crawler.stats is not None:
            self.crawler.stats.inc_value(key, count)

    @staticmethod
    def _in_reactor(call: Any, *args: Any) -> None:
        from twisted.internet import reactor

        reactor.callFromThread(call, *args)  # type: ignore[attr-defined]
