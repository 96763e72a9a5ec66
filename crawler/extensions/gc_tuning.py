"""Keep Python's cyclic garbage collector from re-scanning the crawl's start-up objects for every image.

A crawl process builds a few hundred thousand long-lived objects before its first request (Scrapy, Twisted,
pyarrow, numba's typing tables) and then allocates and frees millions of short-lived ones (Deferreds, Failures,
headers). With CPython's default thresholds (700, 10, 10) a crawl of 3,333 references ran ~550 young and 5-6
full collections; the full ones walk every start-up object again: 0.96-0.99 s of GC over a 23-30 s crawl on one
core. Freezing what exists when the engine starts (``gc.freeze``, the idiom CPython documents for forked
servers) and collecting the young generation every 7,000 net allocations instead of 700 cut that to 0.40-0.50 s
(docs/performance.md). Refcounting still frees everything not in a cycle at once; cycles wait a little longer.

The thresholds and the frozen set are restored when the engine stops, so a process that runs several crawls
(tests, ``CrawlerRunner``) is left as it was.
"""

from __future__ import annotations

import gc
import logging

from scrapy import signals
from scrapy.crawler import Crawler
from scrapy.exceptions import NotConfigured

logger = logging.getLogger(__name__)


class GcTuningExtension:
    """Freeze start-up objects and raise the young generation's threshold while the engine runs."""

    def __init__(self, threshold: tuple[int, ...], freeze: bool) -> None:
        self.threshold = threshold
        self.freeze = freeze
        self._saved_threshold: tuple[int, ...] | None = None
        self._froze = False

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> GcTuningExtension:
        settings = crawler.settings
        threshold = tuple(int(v) for v in settings.getlist("REFWATCH_GC_THRESHOLD") if str(v).strip())
        freeze = settings.getbool("REFWATCH_GC_FREEZE")
        if not threshold and not freeze:
            raise NotConfigured("REFWATCH_GC_THRESHOLD is empty and REFWATCH_GC_FREEZE is off")
        if threshold and (len(threshold) > 3 or any(v < 0 for v in threshold)):
            raise NotConfigured(f"REFWATCH_GC_THRESHOLD must be up to 3 non-negative integers, not {threshold}")
        ext = cls(threshold, freeze)
        crawler.signals.connect(ext.engine_started, signal=signals.engine_started)
        crawler.signals.connect(ext.engine_stopped, signal=signals.engine_stopped)
        return ext

    def engine_started(self) -> None:
        if self.freeze and gc.isenabled():
            gc.collect()  # what is garbage now must not be frozen for good
            gc.freeze()
            self._froze = True
        if self.threshold:
            self._saved_threshold = gc.get_threshold()
            gc.set_threshold(*self.threshold)
        logger.debug("garbage collector: %d objects frozen, thresholds %s", gc.get_freeze_count(),
                     gc.get_threshold())

    def engine_stopped(self) -> None:
        if self._saved_threshold is not None:
            gc.set_threshold(*self._saved_threshold)
            self._saved_threshold = None
        if self._froze:
            gc.unfreeze()
            self._froze = False
