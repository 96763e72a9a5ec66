"""Write ``<out>/runs/<run_id>/summary.json`` when a crawl ends, from the crawl's stats.

The summary is built by a pure function from the stats keys, so what it says and what the metrics say can
never disagree. It is written to a temporary name and renamed: a reader sees the old summary or the new.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from scrapy import Spider, signals
from scrapy.crawler import Crawler

from crawler.runs.summary import build_summary, write_summary

logger = logging.getLogger(__name__)


class SummaryExtension:
    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> SummaryExtension:
        ext = cls(crawler)
        crawler.signals.connect(ext.spider_closed, signal=signals.spider_closed)
        return ext

    def spider_closed(self, spider: Spider, reason: str) -> None:
        run = getattr(spider, "run", None)
        if run is None or self.crawler.stats is None:
            return
        if self.crawler.settings.getdict("REFWATCH_SHARD"):
            return  # one shard of a sharded run: its counts are in its commit; the run's summary is the parent's
        stats = dict(self.crawler.stats.get_stats())
        stats.setdefault("finish_reason", reason)
        summary = build_summary(stats, run_id=run.run_id, snapshots=list(getattr(spider, "snapshots", [])),
                                finished_at=datetime.now(UTC))
        write_summary(run.summary_path, summary)
        run.publish(run.summary_path)
        logger.info("run %s: %d references, %d alive, %d matched, %.1f refs/s", run.run_id, summary["references"],
                    summary["alive"], summary["matched_references"], summary["refs_per_second"])
