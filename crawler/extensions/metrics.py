"""Prometheus metrics for a running crawl, served at ``/metrics``.

Counters are read from the crawl's stats at scrape time (one source of truth: the stats keys documented in
the README), so nothing on the hot path updates two counters for one event. Durations are histograms fed
from each scraped row. Each crawler gets its own ``CollectorRegistry``: two crawlers in one process never
collide. Labels are bounded: outcome words, configured list names and algorithm names — never a URL, host
or hash. The HTTP server is prometheus_client's own threaded one (no ``prometheus_client.twisted`` import,
which would install a reactor).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from scrapy import Spider, signals
from scrapy.crawler import Crawler
from scrapy.exceptions import NotConfigured

from crawler.items import OutcomeItem
from crawler.runs.counters import FETCH_BUCKETS, HASH_BUCKETS, Buckets, crawl_families, duration_families

logger = logging.getLogger(__name__)

#: Seconds between two writes of REFWATCH_STATS_FILE (a worker's /metrics is at most this far behind).
STATS_FILE_SECONDS = 2.0


class StatsCollector(Collector):
    """Builds the counter families from the crawler's stats when Prometheus scrapes."""

    def __init__(self, crawler: Crawler, extension: MetricsExtension) -> None:
        self.crawler = crawler
        self.extension = extension

    def collect(self) -> Iterator[Metric]:
        stats: dict[str, Any] = dict(self.crawler.stats.get_stats()) if self.crawler.stats else {}
        yield from crawl_families(stats)
        yield from duration_families(self.extension.fetch_duration, self.extension.hash_duration)
        inflight = GaugeMetricFamily("refwatch_inflight_requests", "Requests being downloaded now.")
        try:
            active = len(self.crawler.engine.downloader.active)
        except RuntimeError:  # scraped before the crawl started (Crawler.engine is not set yet)
            active = 0
        inflight.add_metric([], active)
        yield inflight


class MetricsExtension:
    """``/metrics`` on ``REFWATCH_METRICS_PORT``, and/or the same counters written to ``REFWATCH_STATS_FILE``
    every few seconds (a shard crawl's, for the worker that runs it to serve)."""

    def __init__(self, crawler: Crawler, port: int | None, address: str, stats_file: str | None = None) -> None:
        self.crawler = crawler
        self.port = port
        self.address = address
        self.stats_file = Path(stats_file) if stats_file else None
        self.registry = CollectorRegistry()
        self.fetch_duration = Buckets(FETCH_BUCKETS)
        self.hash_duration = Buckets(HASH_BUCKETS)
        self.registry.register(StatsCollector(crawler, self))
        self._server: Any = None
        self._thread: Any = None
        self._writer: Any = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> MetricsExtension:
        port = crawler.settings.get("REFWATCH_METRICS_PORT")
        stats_file = crawler.settings.get("REFWATCH_STATS_FILE")
        if (port is None or port == "") and not stats_file:
            raise NotConfigured  # off unless a port or a stats file is given
        ext = cls(crawler, None if port in (None, "") else int(port), crawler.settings.get("REFWATCH_METRICS_ADDRESS"),
                  stats_file)
        crawler.signals.connect(ext.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(ext.item_scraped, signal=signals.item_scraped)
        crawler.signals.connect(ext.engine_stopped, signal=signals.engine_stopped)
        return ext

    @property
    def bound_port(self) -> int | None:
        return None if self._server is None else self._server.server_address[1]

    def spider_opened(self, spider: Spider) -> None:
        if self.port is not None:
            self._server, self._thread = start_http_server(self.port, addr=self.address, registry=self.registry)
            logger.info("Prometheus metrics at http://%s:%d/metrics", self.address, self.bound_port)
        if self.stats_file is not None:
            from twisted.internet.task import LoopingCall

            self._writer = LoopingCall(self.write_stats_file)
            self._writer.start(STATS_FILE_SECONDS, now=True)

    def item_scraped(self, item: Any, spider: Spider) -> None:
        if not isinstance(item, OutcomeItem):
            return
        if item.elapsed_ms is not None:
            self.fetch_duration.observe(item.elapsed_ms / 1000.0)
        if item.hash_ms is not None:
            self.hash_duration.observe(item.hash_ms / 1000.0)

    def write_stats_file(self) -> None:
        """The crawl's numeric ``refwatch/*`` stats and its two histograms, replaced whole (a reader sees the
        last version or the one before)."""
        assert self.stats_file is not None
        stats = dict(self.crawler.stats.get_stats()) if self.crawler.stats else {}
        counters = {k: v for k, v in stats.items()
                    if k.startswith("refwatch/") and isinstance(v, int | float) and not isinstance(v, bool)}
        try:
            inflight = len(self.crawler.engine.downloader.active)
        except (RuntimeError, AttributeError):
            inflight = 0
        data = {"stats": counters, "fetch_duration": self.fetch_duration.to_json(),
                "hash_duration": self.hash_duration.to_json(), "inflight": inflight}
        tmp = self.stats_file.with_name(f".{self.stats_file.name}.tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, self.stats_file)

    def engine_stopped(self) -> None:
        if self._writer is not None:
            if self._writer.running:
                self._writer.stop()
            self.write_stats_file()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
