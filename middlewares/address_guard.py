"""Refuse to connect to loopback, private, link-local and other non-public addresses.

The check is made on the resolved address, through the same caching resolver Scrapy then connects with,
so a host name pointing at 127.0.0.1 or the metadata service is refused as surely as the literal address.
Redirects pass through here again, so a public URL redirecting to a private one is refused too.
``REFWATCH_ALLOW_PRIVATE_NETWORKS`` switches the guard off (the demo and the tests crawl loopback).
"""

from __future__ import annotations

from scrapy.crawler import Crawler
from scrapy.exceptions import IgnoreRequest, NotConfigured
from scrapy.http import Request
from scrapy.utils.defer import maybe_deferred_to_future
from scrapy.utils.httpobj import urlparse_cached

from crawler.addresses import is_ip_literal, is_public_address


class BlockedAddressError(IgnoreRequest):
    """The request's host resolves to an address refwatch must not connect to."""


class AddressGuardMiddleware:
    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> AddressGuardMiddleware:
        if crawler.settings.getbool("REFWATCH_ALLOW_PRIVATE_NETWORKS"):
            raise NotConfigured("REFWATCH_ALLOW_PRIVATE_NETWORKS is set: private and loopback addresses will be fetched")
        return cls(crawler)

    async def process_request(self, request: Request) -> None:
        host = urlparse_cached(request).hostname
        if not host:
            return None
        if is_ip_literal(host):
            address = host
        else:
            from twisted.internet import reactor

            # DNS failures propagate as they are and become dns_error.
            address = await maybe_deferred_to_future(reactor.resolve(host))  # type: ignore[attr-defined]
        if not is_public_address(address):
            assert self.crawler.stats is not None
            self.crawler.stats.inc_value("refwatch/blocked_address")
            raise BlockedAddressError(f"{host} resolves to non-public address {address}")
        return None
