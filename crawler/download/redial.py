"""Refused connections retried where they fail: at the dial, not through Scrapy's scheduler.

A refused connection is transient (a server restarting, a full backlog), so refwatch retries it like Scrapy
does (``RETRY_TIMES`` more tries). Through Scrapy, though, each try is a whole trip: scheduler, downloader
slot, eleven middleware hooks, the failure back through them, ``RetryMiddleware`` building a new request
(1.1-1.2 ms of CPU a try, measured: bench/deadlink_bench.py). A third or more of a real snapshot's references
are dead, and a refused one paid three trips. Here a refused dial is dialled again at once, inside the same
download, up to the retries the request has left; then the request's ``retry_times`` says they were spent,
so ``RetryMiddleware`` gives up on the final refusal instead of retrying it again ("Gave up retrying", the
``retry/max_reached`` stat), and a later retryable answer (a 503 after a successful redial) gets only what is
left: one budget of retries per reference, as before.

Only ``ConnectionRefusedError`` is redialled: a time-out already waited its ``DOWNLOAD_TIMEOUT`` and keeps
Scrapy's retry (with the politeness and back-off that go with it); a refused address (``blocked_address``)
and NXDOMAIN are definitive and never retried.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

@implementer(IStreamClientEndpoint)
class RedialRefusedEndpoint:
    """``endpoint``, dialled again (at most ``redials`` times) while the connection is refused; ``on_redial``
    is called before each new dial. Cancelling the connection cancels the dial in progress."""

    def __init__(self, endpoint: IStreamClientEndpoint, redials: int,
                 on_redial: Callable[[], None] | None = None) -> None:
        self._endpoint = endpoint
        self._redials = redials
        self._on_redial = on_redial

    def connect(self, protocolFactory: Any) -> Deferred[Any]:
        left = self._redials

        def again(failure: Failure) -> Any:
            nonlocal left
            if left <= 0 or not failure.check(ConnectionRefusedError):
                return failure
            left -= 1
            if self._on_redial is not None:
                self._on_redial()
            return self._endpoint.connect(protocolFactory).addErrback(again)

        return self._endpoint.connect(protocolFactory).addErrback(again)


def redials_left(meta: dict[str, Any], retry_enabled: bool, retry_times: int) -> int:
    """How many more dials a request may spend on refusals: the retries ``RetryMiddleware`` would still give
    it (none with ``dont_retry`` or retries off)."""
    if not retry_enabled or meta.get("dont_retry", False):
        return 0
    return max(0, int(meta.get("max_retry_times", retry_times)) - int(meta.get("retry_times", 0)))
