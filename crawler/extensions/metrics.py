"""Prometheus metrics for a running crawl, served at ``/metrics``.

Counters are read from the crawl's stats at scrape time (one source of truth: the stats keys documented in
the README), so nothing on the hot path updates two counters for one event. Durations are histograms fed
from each scraped row. Each crawler gets its own ``CollectorRegistry``: two crawlers in one process never
collide. Labels are bounded: outcome words, configured list names and algorithm names — never a URL, host
or hash. The HTTP server is prometheus_client's own threaded one (no ``prometheus_client.twisted`` import,
which would install a reactor).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from scrapy import Spider, signals
from scrapy.crawler import Crawler
from scrapy.exceptions import NotConfigured

from crawler.items import OutcomeItem
from crawler.outcomes import Outcome

logger = logging.getLogger(__name__)

FETCH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
HASH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

_SIMPLE_COUNTERS = (
    ("refwatch_refs_read", "References read from snapshots.", "refwatch/refs_read"),
    ("refwatch_bad_records", "Corrupt snapshot records skipped.", "refwatch/bad_records"),
    ("refwatch_response_bytes", "Bytes of response bodies hashed.", "refwatch/response_bytes"),
    ("refwatch_events_published", "Match events written to the queue.", "refwatch/events_published"),
    ("refwatch_queue_batches_written", "Event batch objects written to the queue.", "refwatch/queue/batches_written"),
    ("refwatch_queue_errors", "Failed queue writes (each one retried).", "refwatch/queue/errors"),
)


class StatsCollector(Collector):
    """Builds the counter families from the crawler's stats when Prometheus scrapes."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler

    def collect(self) -> Iterator[Metric]:
        stats: dict[str, Any] = dict(self.crawler.stats.get_stats()) if self.crawler.stats else {}
        fetches = CounterMetricFamily("refwatch_fetches", "References fetched, by final outcome.", labels=["outcome"])
        for outcome in Outcome:
            fetches.add_metric([outcome.value], stats.get(f"refwatch/outcome/{outcome.value}", 0))
        yield fetches
        matches = CounterMetricFamily(
            "refwatch_matches", "Hash-list matches, by list, algorithm and where the hash came from (live bytes, "
            "or the hash the snapshot recorded).", labels=["list", "algorithm", "source"])
        for prefix, source in (("refwatch/matches/", "live"), ("refwatch/recorded_matches/", "recorded")):
            for key, value in sorted(stats.items()):
                if key.startswith(prefix):
                    list_name, algorithm = key[len(prefix):].rsplit("/", 1)
                    matches.add_metric([list_name, algorithm, source], value)
        yield matches
        for name, documentation, key in _SIMPLE_COUNTERS:
            yield CounterMetricFamily(name, documentation, value=stats.get(key, 0))
        inflight = GaugeMetricFamily("refwatch_inflight_requests", "Requests being downloaded now.")
        try:
            active = len(self.crawler.engine.downloader.active)
        except RuntimeError:  # scraped before the crawl started (Crawler.engine is not set yet)
            active = 0
        inflight.add_metric([], active)
        yield inflight


class MetricsExtension:
    def __init__(self, crawler: Crawler, port: int | None, address: str) -> None:
        self.crawler = crawler
        self.port = port
        self.address = address
        self.registry = CollectorRegistry()
        self.registry.register(StatsCollector(crawler))
        self.fetch_duration = Histogram("refwatch_fetch_duration_seconds", "Time to download a reference.",
                                        buckets=FETCH_BUCKETS, registry=self.registry)
        self.hash_duration = Histogram("refwatch_hash_duration_seconds", "Time to hash a fetched body in memory.",
                                       buckets=HASH_BUCKETS, registry=self.registry)
        self._server: Any = None
        self._thread: Any = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> MetricsExtension:
        port = crawler.settings.get("REFWATCH_METRICS_PORT")
        if port is None or port == "":
            raise NotConfigured  # off unless a port is given
        ext = cls(crawler, int(port), crawler.settings.get("REFWATCH_METRICS_ADDRESS"))
        crawler.signals.connect(ext.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(ext.item_scraped, signal=signals.item_scraped)
        crawler.signals.connect(ext.engine_stopped, signal=signals.engine_stopped)
        return ext

    @property
    def bound_port(self) -> int | None:
        return None if self._server is None else self._server.server_address[1]

    def spider_opened(self, spider: Spider) -> None:
        self._server, self._thread = start_http_server(self.port, addr=self.address, registry=self.registry)
        logger.info("Prometheus metrics at http://%s:%d/metrics", self.address, self.bound_port)

    def item_scraped(self, item: Any, spider: Spider) -> None:
        if not isinstance(item, OutcomeItem):
            return
        if item.elapsed_ms is not None:
            self.fetch_duration.observe(item.elapsed_ms / 1000.0)
        if item.hash_ms is not None:
            self.hash_duration.observe(item.hash_ms / 1000.0)

    def engine_stopped(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
