"""Scrapy's HTTP/1.1 download handler whose connections fail as fast as the network says they do.

Twisted's ``HostnameEndpoint`` (what ``twisted.web.client.Agent`` connects with) tries one resolved address
per tick of a ``LoopingCall`` every ``attemptDelay`` (0.3 s) and notices that every address failed only on
the tick after the last one, so a refused connection took at least 0.3 s whatever the CPU: 61 refused
references/s on 16 loopback hosts (bench/deadlink_bench.py; 286/s and half the CPU with this handler). Here:

* a host written as an IP address, or a name that Scrapy's DNS cache holds one address for (refwatch's
  resolver, like Scrapy's ``CachingThreadedResolver``, answers one IPv4 address and caches it; the address
  guard resolved it just before), connects with a plain ``TCP4ClientEndpoint`` / ``TCP6ClientEndpoint`` to
  that address: nothing to race, the failure arrives with the socket's, and ~0.5 ms of CPU per connection
  less than ``HostnameEndpoint`` (which builds a class per ``connect``);
* any other name is resolved once by ``CheckedHostnameEndpoint`` (a short ``ATTEMPT_DELAY``), which connects
  to exactly the answer it checked;
* with an address policy (crawler/addresses.py: public addresses plus ``--allow-network``), the address
  dialled — the literal, the cached answer, or the answer just looked up — is checked first and a refused one
  fails without a connection (``RefusedEndpoint``): a DNS answer that changed since the address guard looked
  (rebinding, a cache eviction) cannot slip through.

A refused dial is dialled again at once, as many times as the request has retries left
(``crawler/download/redial.py``), instead of going back through Scrapy's scheduler for each retry.

A body that passes the size limit while it streams (chunked, or read until the connection closes) fails as
``TooLargeError`` (outcome ``too_large``): Scrapy cancels it with an anonymous cancellation, which read as a
connection error.

Bodies are held within the crawl's body budget (``REFWATCH_BODY_BUDGET``; crawler/download/budgeted_body.py):
Scrapy's body reader is wrapped so that a download the budget refuses is paused, a failed download gives its
bytes back here, and a finished one hands them over with its response.

Everything else is the stock handler's: TLS context factory (``wrapClientTLS``), proxies (their agents are
Scrapy's, unchanged), maxsize/warnsize, dataloss, bindaddress, the connection pool and its settings.

Private names relied on (checked against Scrapy 2.19 and Twisted 26.10): Scrapy's
``_LenientHTTP11ClientFactory`` and ``_LenientHTTP11ClientProtocol`` (subclassed), ``_ScrapyAgent`` (its
``_get_agent`` and ``_cb_bodyready``, and the attributes ``_contextFactory``, ``_bindAddress``, ``_pool``), ``_BindAddressAgent`` and
``HTTP11DownloadHandler``'s attributes ``_pool``, ``_contextFactory``, ``_bind_address``, ``_default_maxsize``,
``_default_warnsize``, ``_fail_on_dataloss(_warned)``, ``_tls_verbose_logging``, ``_crawler``; Twisted's
``twisted.web.client._StandardEndpointFactory`` (its ``_reactor``, ``_policyForHTTPS``, ``_connectTimeout``,
``_bindAddress``, the last two read by Scrapy's agents); ``scrapy.resolver.dnscache`` (name -> address); and
the ``_maxsize``, ``_bytes_received`` and ``_bodybuf`` of Scrapy's ``_ResponseReader`` (the body protocol it
delivers to);
``_ScrapyAgent``'s ``_timeout_cl`` (the download timeout's ``DelayedCall``, delayed by time paused for the
body budget) and ``_connectTimeout`` (the download timeout when the request sets none).
``download_request`` repeats the stock one's body because it names ``_ScrapyAgent`` directly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from scrapy.core.downloader.handlers.http11 import (
    HTTP11DownloadHandler,
    _BindAddressAgent,
    _LenientHTTP11ClientFactory,
    _LenientHTTP11ClientProtocol,
    _ScrapyAgent,
)
from scrapy.exceptions import ResponseDataLossError
from scrapy.resolver import dnscache
from scrapy.utils._download_handlers import get_dataloss_msg, normalize_bind_address, wrap_twisted_exceptions
from scrapy.utils.defer import maybe_deferred_to_future
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python.failure import Failure
from twisted.web._newclient import HEADER, STATUS
from twisted.web.client import URI, Agent, ResponseFailed, _StandardEndpointFactory
from zope.interface import implementer

from crawler.addresses import AddressPolicy, BlockedAddressError, policy_from_settings
from crawler.download.body_budget import BodyBudget
from crawler.download.budgeted_body import BODY_RELEASE_META, BudgetedBody, budget_for, hand_over
from crawler.download.redial import RedialRefusedEndpoint, redials_left
from crawler.download.size_warnings import demote_size_warnings

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.http import Response

logger = logging.getLogger(__name__)

#: Refused dials tried again inside the download (crawler/download/redial.py), counted in the crawl stats.
REDIALS_STAT = "refwatch/refused_redials"

#: Seconds between a host name's connection attempts (Twisted's default: 0.3). A failed attempt is noticed on
#: the next tick, so this is also the least a refused connection to a named host costs in wall time.
ATTEMPT_DELAY = 0.02


class FastEndpointFactory(_StandardEndpointFactory):
    """``Agent``'s endpoint factory, minus the attempt delay on IP literals and shortened on names; with a
    ``policy``, the address it dials is the address it checked (``None``: no check, for tests of the endpoints).
    """

    def __init__(self, reactor: Any, contextFactory: Any, connectTimeout: float | None, bindAddress: Any,
                 policy: AddressPolicy | None = None, redials: int = 0,
                 on_redial: Callable[[], None] | None = None) -> None:
        super().__init__(reactor, contextFactory, connectTimeout, bindAddress)
        self._policy = policy
        self._redials = redials  # refused dials tried again at once (crawler/download/redial.py)
        self._on_redial = on_redial

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        if uri.scheme not in (b"http", b"https"):
            return super().endpointForURI(uri)  # the stock error
        host = uri.host.decode("ascii")  # Scrapy's agent sends ASCII (IDNA-encoded) hosts
        # A name the resolver already answered connects to that answer: what HostnameEndpoint does with a
        # simple resolver (one address, from the same cache), without its per-connection machinery.
        address = dnscache.get(host, host)
        timeout = 30 if self._connectTimeout is None else self._connectTimeout
        endpoint: IStreamClientEndpoint
        if isinstance(address, str) and (isIPAddress(address) or isIPv6Address(address)):
            refusal = None if self._policy is None else self._policy.refusal(host, address)
            if refusal is not None:  # a refused literal, or a refused answer still in the cache: never dialled
                return RefusedEndpoint(refusal)
            endpoint_class = TCP4ClientEndpoint if isIPAddress(address) else TCP6ClientEndpoint
            endpoint = endpoint_class(self._reactor, address, uri.port, timeout, self._bindAddress)
        elif self._policy is not None:  # not cached: resolve, check that answer, connect to it
            endpoint = CheckedHostnameEndpoint(self._reactor, host, uri.port, self._policy, timeout=timeout,
                                               bindAddress=self._bindAddress, attemptDelay=ATTEMPT_DELAY)
        else:  # not cached, or cached as a list by Scrapy's CachingHostnameResolver: resolve and race
            endpoint = HostnameEndpoint(self._reactor, host, uri.port, timeout=timeout,
                                        bindAddress=self._bindAddress, attemptDelay=ATTEMPT_DELAY)
        if self._redials:
            endpoint = RedialRefusedEndpoint(endpoint, self._redials, self._on_redial)
        if uri.scheme == b"https":  # TLS (SNI, verification) on the name, whatever address is dialled
            return wrapClientTLS(self._policyForHTTPS.creatorForNetloc(uri.host, uri.port), endpoint)
        return endpoint


@implementer(IStreamClientEndpoint)
class RefusedEndpoint:
    """An endpoint that connects nowhere: its connection fails with ``BlockedAddressError`` (``blocked_address``)."""

    def __init__(self, refusal: str) -> None:
        self.refusal = refusal

    def connect(self, protocolFactory: Any) -> Deferred[Any]:
        return fail(BlockedAddressError(f"refused at connection: {self.refusal}"))


class CheckedHostnameEndpoint(HostnameEndpoint):
    """A host name resolved once, through the reactor's resolver (refwatch's: cached, NXDOMAIN told apart), its
    answer checked against the policy, and that address connected to, so no second look-up can answer
    differently (DNS rebinding). The connection itself is ``HostnameEndpoint``'s, on the checked literal: the
    same attempt loop as before over the one address refwatch's resolver gives."""

    def __init__(self, reactor: Any, host: str, port: int, policy: AddressPolicy, *, timeout: float,
                 bindAddress: Any, attemptDelay: float) -> None:
        super().__init__(reactor, host, port, timeout=timeout, bindAddress=bindAddress, attemptDelay=attemptDelay)
        # Kept under names of our own: HostnameEndpoint's attributes are private.
        self._checked = (reactor, host, port, policy)
        self._checked_options = {"timeout": timeout, "bindAddress": bindAddress, "attemptDelay": attemptDelay}

    def connect(self, protocolFactory: Any) -> Deferred[Any]:
        reactor, host = self._checked[:2]
        answer: Deferred[str] = reactor.resolve(host)
        return answer.addCallback(self._connect_to, protocolFactory)

    def _connect_to(self, address: str, protocolFactory: Any) -> Deferred[Any]:
        reactor, host, port, policy = self._checked
        refusal = policy.refusal(host, address)
        if refusal is not None:
            raise BlockedAddressError(f"refused at connection: {refusal}")
        options = self._checked_options
        endpoint: IStreamClientEndpoint
        if isIPv6Address(address):  # Twisted's simple-resolver adapter would take it for IPv4
            endpoint = TCP6ClientEndpoint(reactor, address, port, options["timeout"], options["bindAddress"])
        else:
            endpoint = HostnameEndpoint(reactor, address, port, **options)
        return endpoint.connect(protocolFactory)


#: A response head larger than this (status line and header lines, bytes) or with more header lines fails:
#: Twisted bounds each line (16 KiB) but not how many come, and a server can stream them for the whole timeout.
MAX_HEAD_BYTES = 64 * 1024
MAX_HEADER_LINES = 256


class ResponseHeadTooLarge(Exception):
    """The server sent more response head (bytes or header lines) than refwatch reads: outcome ``http_error``.

    Raised by ``download_request`` itself, not wrapped in Scrapy's ``DownloadFailedError``: that one is in
    ``RETRY_EXCEPTIONS``, and a server that streams header lines would get three attempts, each holding a
    download slot until the head passes the limit. This one is not retried: the answer is broken, not late.
    """


class BoundedHTTP11ClientProtocol(_LenientHTTP11ClientProtocol):
    """Scrapy's client protocol (Twisted's, parsing heads as browsers do: a header line without a colon is
    skipped, not a failed response), with the response head it parses bounded in bytes and header lines."""

    def __init__(self, quiescentCallback: Any, max_head_bytes: int, max_header_lines: int) -> None:
        super().__init__(quiescentCallback)
        self._max_head_bytes = max_head_bytes
        self._max_header_lines = max_header_lines

    def request(self, request: Any) -> Any:
        result = super().request(request)
        parser = self._parser
        if parser is not None:  # None when the request could not be sent (Twisted failed it already)
            _bound_head(parser, self._max_head_bytes, self._max_header_lines)
        return result


def _bound_head(parser: Any, max_bytes: int, max_lines: int) -> None:
    """Count the parser's head lines (status and headers; the body is read raw, not by line) and fail the
    response once it has had too many: the exception ends the request (``HTTP11ClientProtocol.dataReceived``
    gives up with it) and the connection is closed, not reused."""
    seen = [0, 0]  # bytes, lines
    line_received = parser.lineReceived

    def counted(line: bytes) -> None:
        if parser.state in (STATUS, HEADER):
            seen[0] += len(line) + 2
            seen[1] += 1
            if seen[0] > max_bytes or seen[1] > max_lines + 1:
                raise ResponseHeadTooLarge(f"response head over {max_bytes} bytes or {max_lines} header lines")
        line_received(line)

    parser.lineReceived = counted


def _head_too_large(error: BaseException) -> ResponseHeadTooLarge | None:
    """The ``ResponseHeadTooLarge`` a response failed with (Twisted's ``ResponseFailed`` reasons, which
    Scrapy wraps in ``DownloadFailedError``), if that is why it failed."""
    failed = error.__cause__ if isinstance(error.__cause__, ResponseFailed) else error
    for reason in getattr(failed, "reasons", None) or ():
        if isinstance(reason, Failure) and isinstance(reason.value, ResponseHeadTooLarge):
            return reason.value
    return None


class BoundedClientFactory(_LenientHTTP11ClientFactory):
    """The connection pool's protocol factory, building ``BoundedHTTP11ClientProtocol``. Scrapy's, so also
    quiet (``noisy = False``): otherwise Twisted logs "Starting factory"/"Stopping factory" for every new
    connection, two log events a dead link (4% of a refused reference's CPU under cProfile, within the noise
    of bench/deadlink_bench.py without it)."""

    def __init__(self, quiescentCallback: Any, metadata: Any, *, max_head_bytes: int = MAX_HEAD_BYTES,
                 max_header_lines: int = MAX_HEADER_LINES) -> None:
        super().__init__(quiescentCallback, metadata)
        self._limits = (max_head_bytes, max_header_lines)

    def buildProtocol(self, addr: Any) -> BoundedHTTP11ClientProtocol:
        return BoundedHTTP11ClientProtocol(self._quiescentCallback, *self._limits)


class TooLargeError(Exception):
    """A body that passed ``--max-bytes`` while it was being read (chunked, or read until the connection
    closed): the outcome is ``too_large``, as for a ``Content-Length`` over the limit."""


class FastScrapyAgent(_ScrapyAgent):
    def __init__(self, *, body_budget: BodyBudget | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._body_budget = body_budget
        self.body: BudgetedBody | None = None  # the body being read, when there is a budget and a body

    def _cb_bodyready(self, txresponse: Any, request: Request) -> Any:
        """Scrapy's, except that a body cancelled for passing the size limit while it streamed fails as
        ``TooLargeError`` instead of an anonymous cancellation (which reads as a connection error), and that
        the body is read within the body budget."""
        readers: list[Any] = []
        deliver = txresponse.deliverBody

        def deliver_and_keep(protocol: Any) -> None:
            readers.append(protocol)
            if self._body_budget is None:
                deliver(protocol)
                return
            length = txresponse.length
            timeout = request.meta.get("download_timeout") or self._connectTimeout
            self.body = BudgetedBody(protocol, self._body_budget, length if isinstance(length, int) else None,
                                     self._extend_timeout, timeout)
            deliver(self.body)
            self.body.delivered()

        txresponse.deliverBody = deliver_and_keep
        result = super()._cb_bodyready(txresponse, request)
        if isinstance(result, Deferred):
            result.addErrback(_too_large, readers)
            result.addBoth(_let_go_of_body, readers)
        return result

    def _extend_timeout(self, seconds: float) -> None:
        """Push the download timeout back by ``seconds`` (time the body spent paused for the budget)."""
        call = getattr(self, "_timeout_cl", None)
        if call is not None and call.active():
            call.delay(seconds)

    def _get_agent(self, request: Request, timeout: float) -> Agent:
        if request.meta.get("proxy"):
            return super()._get_agent(request, timeout)
        from twisted.internet import reactor

        bindaddress = normalize_bind_address(request.meta.get("bindaddress") or self._bindAddress)
        settings = self._crawler.settings
        policy = policy_from_settings(settings)  # cached: two settings look-ups
        redials = (redials_left(request.meta, settings.getbool("RETRY_ENABLED"), settings.getint("RETRY_TIMES"))
                   if settings.getbool("REFWATCH_REDIAL_REFUSED", True) else 0)
        endpoints = FastEndpointFactory(reactor, self._contextFactory, timeout, bindaddress, policy, redials,
                                        partial(_count_redial, request, self._crawler.stats))
        return _BindAddressAgent.usingEndpointFactory(reactor, endpoints, pool=self._pool)


def _count_redial(request: Request, stats: Any) -> None:
    """A refused dial is about to be tried again: it spends one of the request's retries (so RetryMiddleware
    gives up on the last refusal instead of retrying it again) and counts as a retry in the stats."""
    request.meta["retry_times"] = request.meta.get("retry_times", 0) + 1
    if stats is not None:
        stats.inc_value("retry/count")
        stats.inc_value(REDIALS_STAT)


def _too_large(failure: Failure, readers: list[Any]) -> Failure:
    """Turn the reader's own cancellation for size (``_bytes_received`` over ``_maxsize``) into TooLargeError."""
    reader = readers[0] if readers else None
    maxsize = getattr(reader, "_maxsize", 0)
    if failure.check(CancelledError) and maxsize and getattr(reader, "_bytes_received", 0) > maxsize:
        raise TooLargeError(f"body larger than download max size ({maxsize} bytes) while it was being read")
    return failure


def _let_go_of_body(result: Any, readers: list[Any]) -> Any:
    """The body is read, failed or timed out: empty the reader's buffer now (a finished body lives on in its
    response; the buffer only shares it).

    Otherwise the bytes live as long as the reader, which sits in reference cycles (reader -> Twisted's
    response -> ``deliver_and_keep`` -> ``readers``; the agent and its ``BudgetedBody``) that only the cyclic
    collector frees. A download that timed out while the body budget paused it had been alive for seconds,
    so its reader was in the oldest generation, collected rarely: in bench/hostile_load.py such readers held
    up to ~50 MiB each, 12 at once (600 MiB past the body budget, which had already counted them as given
    back)."""
    for reader in readers:
        buffer = getattr(reader, "_bodybuf", None)
        if buffer is not None:
            buffer.seek(0)
            buffer.truncate()
    readers.clear()
    return result


class FastHTTP11DownloadHandler(HTTP11DownloadHandler):
    def __init__(self, crawler: Any) -> None:
        super().__init__(crawler)
        limits = {"max_head_bytes": crawler.settings.getint("REFWATCH_MAX_HEAD_BYTES", MAX_HEAD_BYTES),
                  "max_header_lines": crawler.settings.getint("REFWATCH_MAX_HEADER_LINES", MAX_HEADER_LINES)}
        self._pool._factory = partial(BoundedClientFactory, **limits)
        self._body_budget = budget_for(crawler)
        demote_size_warnings()  # a too_large row per reference, not also a WARNING naming its URL

    async def download_request(self, request: Request) -> Response:
        spider: Any = self._crawler.spider
        request.meta.pop(BODY_RELEASE_META, None)  # an earlier attempt's (a retry's meta is a copy)
        agent = FastScrapyAgent(
            body_budget=self._body_budget,
            contextFactory=self._contextFactory,
            bindAddress=self._bind_address,
            pool=self._pool,
            maxsize=getattr(spider, "download_maxsize", self._default_maxsize),
            warnsize=getattr(spider, "download_warnsize", self._default_warnsize),
            fail_on_dataloss=self._fail_on_dataloss,
            crawler=self._crawler,
            tls_verbose_logging=self._tls_verbose_logging,
        )
        try:
            with wrap_twisted_exceptions():
                response = await maybe_deferred_to_future(agent.download_request(request))
        except BaseException as error:  # failed, cancelled, timed out, too large: the bytes read come back
            if agent.body is not None:
                agent.body.hold.release()
            if isinstance(error, ResponseDataLossError) and not self._fail_on_dataloss_warned:
                logger.warning(get_dataloss_msg(request.url))
                self._fail_on_dataloss_warned = True
            head = _head_too_large(error)
            if head is not None:
                raise head from error  # definitive: see ResponseHeadTooLarge
            raise
        if agent.body is not None:
            hand_over(agent.body.hold, request, response)
        return response
