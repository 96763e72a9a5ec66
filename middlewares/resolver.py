"""refwatch's DNS resolver: Scrapy's caching threaded resolver that tells "no such name" from "no answer".

Twisted's ``ThreadedResolver`` turns every ``getaddrinfo`` failure into one ``DNSLookupError``, so a name that
does not exist (NXDOMAIN) and a resolver that did not answer (SERVFAIL, a timeout) look alike, and both
were retried. Here a definitive answer raises ``NoSuchHostError`` (still a ``DNSLookupError``, so Scrapy and
the outcome rules see a DNS error) and is remembered in a bounded negative cache: a dead domain that a
snapshot references a thousand times costs one lookup, not three thousand (Scrapy caches only successes);
the replay spider reads that cache too (``known_missing``), so such a reference after the first ends as
``dns_error`` without a request at all.
An IP literal is answered as itself, without a look-up (``gethostbyname`` cannot parse an IPv6 one).
Wired with ``TWISTED_DNS_RESOLVER`` in ``crawler/settings.py``.

The resolver does not judge addresses: the address guard judges what it answers for a request's host, and
the download handler judges the address it dials (``crawler/download/handler.py``). Refusing here would also
refuse names refwatch is told to use, such as an HTTP proxy on the company network.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

from scrapy.resolver import CachingThreadedResolver, dnscache
from scrapy.utils.datatypes import LocalCache
from twisted.internet import defer, threads
from twisted.internet.error import DNSLookupError
from twisted.python.failure import Failure

from crawler.addresses import is_ip_literal

#: getaddrinfo's answers that are definitive: the name does not exist, or has no address.
DEFINITIVE_GAI_ERRORS = frozenset(
    code for code in (getattr(socket, "EAI_NONAME", None), getattr(socket, "EAI_NODATA", None)) if code is not None
)


#: References that failed because their name does not exist (the address guard's and the spider's).
NO_SUCH_HOST_STAT = "refwatch/dns_no_such_host"


class NoSuchHostError(DNSLookupError):
    """The name does not exist (NXDOMAIN) or has no address: a definitive answer, not worth retrying."""


def lookup_ipv4(name: str, gethostbyname: Callable[[str], str] = socket.gethostbyname) -> str:
    """Resolve ``name`` as Twisted's ThreadedResolver does (``gethostbyname``), classifying the failure."""
    try:
        return gethostbyname(name)
    except socket.gaierror as exc:
        if exc.errno in DEFINITIVE_GAI_ERRORS:
            raise NoSuchHostError(f"address {name!r} not found: {exc.strerror}") from None
        raise DNSLookupError(f"address {name!r} not found: {exc.strerror}") from None
    except UnicodeError as exc:  # a name IDNA cannot encode (an empty label...) never resolves
        raise NoSuchHostError(f"address {name!r} not found: {exc}") from None


class RefwatchResolver(CachingThreadedResolver):
    def __init__(self, reactor: Any, cache_size: int, timeout: float,
                 lookup: Callable[[str], str] = lookup_ipv4) -> None:
        super().__init__(reactor, cache_size, timeout)
        self.lookup = lookup
        self.missing: LocalCache[str, str] = LocalCache(cache_size)  # name -> the NXDOMAIN message

    def getHostByName(self, name: str, timeout: Sequence[int] = ()) -> defer.Deferred[str]:
        if is_ip_literal(name):
            return defer.succeed(name.strip("[]"))
        if name in dnscache:
            return defer.succeed(dnscache[name])
        missing = self.known_missing(name)
        if missing is not None:
            return defer.fail(missing)
        d: defer.Deferred[str] = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                                             self.lookup, name)
        d.addTimeout(self.timeout, self.reactor,
                     onTimeoutCancel=lambda *_: Failure(DNSLookupError(f"address {name!r} not found: timeout")))
        d.addCallbacks(self._found, self._failed, callbackArgs=(name,), errbackArgs=(name,))
        return d

    def known_missing(self, name: str) -> NoSuchHostError | None:
        """The definitive "no such name" remembered for ``name``, the error a look-up would raise; no look-up."""
        message = self.missing.get(name)
        return None if message is None else NoSuchHostError(message)

    def _found(self, address: str, name: str) -> str:
        if dnscache.limit:
            dnscache[name] = address
        return address

    def _failed(self, failure: Failure, name: str) -> Failure:
        if failure.check(NoSuchHostError) and self.missing.limit:
            self.missing[name] = " ".join(failure.value.args)  # the message: str() would prefix it again
        elif not failure.check(DNSLookupError):  # anything else the lookup raised is still a DNS failure
            return Failure(DNSLookupError(f"address {name!r} not found: {failure.getErrorMessage()}"))
        return failure


def installed_resolver() -> RefwatchResolver | None:
    """The reactor's resolver if it is refwatch's (``TWISTED_DNS_RESOLVER``), for its negative cache. Read from
    ``sys.modules``: importing the reactor here would install Twisted's default one before Scrapy's."""
    resolver = getattr(sys.modules.get("twisted.internet.reactor"), "resolver", None)
    return resolver if isinstance(resolver, RefwatchResolver) else None
