"""Resolve each request's host before anything else, so a name that does not exist ends at once.

A download's own resolution goes through Twisted's ``HostnameEndpoint``, which reduces every failure to "no
results", so RetryMiddleware retried a non-existent name ``RETRY_TIMES`` times. Resolving here, through the
same caching resolver the download then uses (a cache hit), sees ``NoSuchHostError`` (see
``middlewares/resolver.py``): the request is marked ``dont_retry`` and fails as ``dns_error`` after one
attempt. Transient DNS failures (SERVFAIL, time-outs) propagate unmarked and keep their bounded retries.
"""

from __future__ import annotations

from scrapy.crawler import Crawler
from scrapy.http import Request
from scrapy.statscollectors import StatsCollector
from scrapy.utils.defer import maybe_deferred_to_future
from scrapy.utils.httpobj import urlparse_cached

from crawler.addresses import is_ip_literal
from middlewares.resolver import NoSuchHostError


class DnsVerdictMiddleware:
    def __init__(self, stats: StatsCollector) -> None:
        self.stats = stats

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> DnsVerdictMiddleware:
        assert crawler.stats is not None
        return cls(crawler.stats)

    async def process_request(self, request: Request) -> None:
        host = urlparse_cached(request).hostname
        if not host or is_ip_literal(host):
            return None
        from twisted.internet import reactor

        try:
            await maybe_deferred_to_future(reactor.resolve(host))  # type: ignore[attr-defined]
        except NoSuchHostError:
            request.meta["dont_retry"] = True  # a definitive answer: RetryMiddleware leaves it alone
            self.stats.inc_value("refwatch/dns_no_such_host")
            raise
        return None
