"""Scrapy's redirect handling, without a Referer and without a warning about it in every crawl's log.

refwatch never sends a ``Referer``: a re-check fetches each reference on its own, and telling image hosts which
page (or dataset) pointed at them is nobody's business. Scrapy's ``RefererMiddleware`` is off for that reason
(crawler/settings.py), and Scrapy's ``RedirectMiddleware`` then warns, once per crawl, that it found none
(every shard child of a sharded run said so again). This subclass says what refwatch does instead: the
``Referer`` of a redirected request is dropped, and nothing is looked up at engine start.
"""

from __future__ import annotations

from typing import Self

from scrapy.crawler import Crawler
from scrapy.downloadermiddlewares.redirect import RedirectMiddleware
from scrapy.http import Request, Response


class NoRefererRedirectMiddleware(RedirectMiddleware):
    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        middleware = cls(crawler.settings)
        middleware.crawler = crawler  # no engine_started hook: there is no RefererMiddleware to find
        return middleware

    def handle_referer(self, request: Request, response: Response) -> None:
        request.headers.pop("Referer", None)
