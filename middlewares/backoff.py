"""Back a host off when it says it is overloaded (429, 503), honouring ``Retry-After``.

Scrapy's RetryMiddleware retries those answers, but on its own it would retry at full speed. Here the
host's downloader slot gets a delay (the one ``Retry-After`` asks for, capped), so the retry and every
other request to that host wait; each later good answer halves the delay back towards the configured one.
"""

from __future__ import annotations

import email.utils
import logging
import time

from scrapy.crawler import Crawler
from scrapy.http import Request, Response

logger = logging.getLogger(__name__)

#: A host's back-off delay this close to the configured one returns to it (see ``process_response``).
SNAP_SECONDS = 0.01

BACKOFF_STATUSES = frozenset({429, 503})


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or an HTTP date); None if unusable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class HostBackoffMiddleware:
    def __init__(self, crawler: Crawler, max_seconds: float, default_seconds: float) -> None:
        self.crawler = crawler
        self.max_seconds = max_seconds
        self.default_seconds = default_seconds
        self.base_delay = crawler.settings.getfloat("DOWNLOAD_DELAY")

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> HostBackoffMiddleware:
        return cls(
            crawler,
            max_seconds=crawler.settings.getfloat("REFWATCH_BACKOFF_MAX_SECONDS"),
            default_seconds=crawler.settings.getfloat("REFWATCH_BACKOFF_DEFAULT_SECONDS"),
        )

    def process_response(self, request: Request, response: Response) -> Response:
        slot = self._slot(request)
        if slot is None:
            return response
        if response.status in BACKOFF_STATUSES:
            header = response.headers.get(b"Retry-After")
            wait = parse_retry_after(header.decode("latin-1") if header else None)
            delay = min(self.max_seconds, self.default_seconds if wait is None else wait)
            if delay > slot.delay:
                slot.delay = delay
            assert self.crawler.stats is not None
            self.crawler.stats.inc_value("refwatch/backoff")
            logger.debug("backing off a host for %.1f s after %d", delay, response.status)
        elif slot.delay > self.base_delay and response.status < 400:
            # halving never reaches the base delay by itself (and Scrapy sends one request per pass of its
            # queue while a slot has any delay): snap back once the delay is down to a hundredth of a second
            halved = slot.delay / 2
            slot.delay = self.base_delay if halved - self.base_delay < SNAP_SECONDS else halved
        return response

    def _slot(self, request: Request):  # type: ignore[no-untyped-def]
        engine = self.crawler.engine
        if engine is None:
            return None
        downloader = engine.downloader
        return downloader.slots.get(downloader.get_slot_key(request))
