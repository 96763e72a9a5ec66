"""Resolve each request's host once, before anything else: judge the name, then the address.

* A name that does not exist ends at once: a download's own resolution goes through Twisted's
  ``HostnameEndpoint``, which reduces every failure to "no results", so RetryMiddleware retried a non-existent
  name ``RETRY_TIMES`` times. Here refwatch's resolver (``middlewares/resolver.py``) raises ``NoSuchHostError``:
  the request is marked ``dont_retry`` and fails as ``dns_error`` after one attempt. Transient DNS failures
  (SERVFAIL, time-outs) propagate unmarked and keep their bounded retries.
* An address refwatch must not connect to (loopback, private, link-local and other non-public addresses not
  in ``REFWATCH_ALLOW_NETWORKS``; ``crawler.addresses.AddressPolicy``) fails as ``blocked_address`` before
  anything is sent, robots.txt included. Redirects pass through here again, so a public URL redirecting to a
  private one is refused too.

This is an early verdict, not the only one: the download handler checks again the address it actually
dials (``crawler/download/handler.py``), so a DNS answer that changes between here and the connection (a
cache eviction, DNS rebinding) cannot reach a refused address. One resolver call per request: the answer is
cached and the download connects to it.
"""

from __future__ import annotations

from scrapy.crawler import Crawler
from scrapy.http import Request
from scrapy.statscollectors import StatsCollector
from scrapy.utils.defer import maybe_deferred_to_future
from scrapy.utils.httpobj import urlparse_cached

from crawler.addresses import AddressPolicy, BlockedAddressError, is_ip_literal, policy_from_settings
from middlewares.resolver import NO_SUCH_HOST_STAT, NoSuchHostError

__all__ = ["AddressGuardMiddleware", "BlockedAddressError"]  # the error's home is crawler.addresses


class AddressGuardMiddleware:
    def __init__(self, stats: StatsCollector, policy: AddressPolicy) -> None:
        self.stats = stats
        self.policy = policy

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> AddressGuardMiddleware:
        assert crawler.stats is not None
        return cls(crawler.stats, policy_from_settings(crawler.settings))

    async def process_request(self, request: Request) -> None:
        host = urlparse_cached(request).hostname
        if not host:
            return None
        if is_ip_literal(host):
            address = host
        else:
            from twisted.internet import reactor

            try:
                address = await maybe_deferred_to_future(reactor.resolve(host))  # type: ignore[attr-defined]
            except NoSuchHostError:
                request.meta["dont_retry"] = True  # a definitive answer: RetryMiddleware leaves it alone
                self.stats.inc_value(NO_SUCH_HOST_STAT)
                raise
            # other DNS failures propagate as they are and become dns_error
        refusal = self.policy.refusal(host, address)
        if refusal is not None:
            self.stats.inc_value("refwatch/blocked_address")
            raise BlockedAddressError(refusal)
        return None
