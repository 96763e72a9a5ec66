"""The floor under any Scrapy crawl of dead links: Scrapy's engine, scheduler, downloader and scraper alone, one
request per reference, a download handler that fails at once, an errback that returns the row. No middleware,
extension or pipeline (Scrapy's or refwatch's), no DNS, no socket.

Run by ``bench/deadlink_bench.py --scenarios ...,floor`` in a child process, over the same snapshot (a CSV
with a ``URL`` column); prints one JSON line: references, seconds from the engine's start to its close.

    python bench/scrapy_floor.py SNAPSHOT.csv CONCURRENCY PER_HOST
"""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import scrapy
from scrapy import signals
from scrapy.crawler import CrawlerProcess
from twisted.internet.error import DNSLookupError


class FailAtOnce:
    """A download handler whose every download fails as a DNS error would, without doing anything."""

    lazy = False

    @classmethod
    def from_crawler(cls, crawler: Any) -> FailAtOnce:
        return cls()

    async def download_request(self, request: scrapy.Request) -> Any:
        raise DNSLookupError("floor")

    async def close(self) -> None:
        return None


class FloorSpider(scrapy.Spider):
    name = "floor"

    def __init__(self, snapshot: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.snapshot = snapshot
        self.rows = 0
        self.opened = self.closed = 0.0

    @classmethod
    def from_crawler(cls, crawler: Any, *args: Any, **kwargs: Any) -> FloorSpider:
        spider: FloorSpider = super().from_crawler(crawler, *args, **kwargs)
        crawler.signals.connect(spider._opened, signals.spider_opened)
        crawler.signals.connect(spider._closed, signals.spider_closed)
        return spider

    def _opened(self) -> None:
        self.opened = time.monotonic()

    def _closed(self) -> None:
        self.closed = time.monotonic()

    async def start(self) -> AsyncIterator[scrapy.Request]:
        with open(self.snapshot, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                yield scrapy.Request(row["URL"], errback=self.failed, dont_filter=True)

    def failed(self, failure: Any) -> dict[str, str]:
        self.rows += 1
        return {"url": failure.request.url, "error": type(failure.value).__name__}


def main() -> int:
    snapshot, concurrency, per_host = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    process = CrawlerProcess({
        "DOWNLOAD_HANDLERS": {"http": f"{__name__}.FailAtOnce", "https": f"{__name__}.FailAtOnce"},
        "TWISTED_REACTOR": "twisted.internet.epollreactor.EPollReactor",  # refwatch's reactor
        "CONCURRENT_ITEMS": 1,  # as refwatch: Scrapy's default 100 costs ~0.5 ms more a request
        "CONCURRENT_REQUESTS": concurrency, "CONCURRENT_REQUESTS_PER_DOMAIN": per_host,
        "DOWNLOADER_MIDDLEWARES_BASE": {}, "EXTENSIONS_BASE": {},
        "SPIDER_MIDDLEWARES_BASE": {"scrapy.spidermiddlewares.start.StartSpiderMiddleware": 25},
        "LOG_LEVEL": "WARNING",
    })
    crawler = process.create_crawler(FloorSpider)
    process.crawl(crawler, snapshot=snapshot)
    process.start()
    spider = crawler.spider
    print(json.dumps({"references": spider.rows, "seconds": spider.closed - spider.opened}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
