"""What became of a reference: the outcome vocabulary and the pure rules that pick one.

Every reference read gets exactly one outcome. The rules here see plain values (a status code, a content
type, what the hasher could decode, an exception) so they test without Scrapy or Twisted; exceptions are
classified by the names of their classes so this module needs neither library's types.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Outcome(StrEnum):
    """The outcome words written to the outcomes dataset; stable, documented, used as a metric label."""

    OK = "ok"
    PLACEHOLDER = "placeholder"
    NOT_FOUND = "not_found"
    GONE = "gone"
    FORBIDDEN = "forbidden"
    HTTP_ERROR = "http_error"
    SERVER_ERROR = "server_error"
    NOT_IMAGE = "not_image"
    DECODE_ERROR = "decode_error"
    TOO_LARGE = "too_large"
    TIMEOUT = "timeout"
    DNS_ERROR = "dns_error"
    CONNECTION_ERROR = "connection_error"
    TLS_ERROR = "tls_error"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    INVALID_URL = "invalid_url"
    BLOCKED_ADDRESS = "blocked_address"
    ROBOTS_BLOCKED = "robots_blocked"

    @property
    def alive(self) -> bool:
        """A host served a decodable image (placeholders do not count as alive)."""
        return self is Outcome.OK


#: The host says the image is not there (any more): not worth asking again soon.
DEAD: frozenset[Outcome] = frozenset({
    Outcome.NOT_FOUND, Outcome.GONE, Outcome.FORBIDDEN, Outcome.HTTP_ERROR, Outcome.NOT_IMAGE,
    Outcome.DECODE_ERROR, Outcome.DNS_ERROR, Outcome.INVALID_URL,
})
#: Every outcome that audited no image: the dead ones and those that may work next time (timeouts,
#: connection and TLS failures, 5xx, too large, refused by policy). Placeholders are not in it.
FAILED: frozenset[Outcome] = frozenset(o for o in Outcome if o not in (Outcome.OK, Outcome.PLACEHOLDER))
#: Names for ``--recheck ... --only`` and ``export-clean --drop``.
OUTCOME_GROUPS: dict[str, frozenset[Outcome]] = {
    "dead": DEAD,
    "failed": FAILED,
    "placeholder": frozenset({Outcome.PLACEHOLDER}),
}


def outcome_for_status(status: int) -> Outcome | None:
    """Outcome decided by the final HTTP status alone; ``None`` for 2xx, where the body decides."""
    if 200 <= status < 300:
        return None
    if status == 404:
        return Outcome.NOT_FOUND
    if status == 410:
        return Outcome.GONE
    if status in (401, 403, 451):
        return Outcome.FORBIDDEN
    if 300 <= status < 400:
        # A redirect that reached us unfollowed: no Location, or one we could not follow.
        return Outcome.HTTP_ERROR
    if 400 <= status < 500:
        return Outcome.HTTP_ERROR
    if status >= 500:
        return Outcome.SERVER_ERROR
    return Outcome.HTTP_ERROR


def outcome_for_body(*, decodable: bool, looks_like_image: bool, content_type: str | None) -> Outcome:
    """Outcome of a 2xx answer: an image is judged by its bytes, not by what the header claims."""
    if decodable:
        return Outcome.OK
    claims_image = bool(content_type) and content_type.split(";")[0].strip().lower().startswith("image/")
    if looks_like_image or claims_image:
        return Outcome.DECODE_ERROR
    return Outcome.NOT_IMAGE


# Exception class names (anywhere in the MRO) -> outcome; first match in this order wins, so the more
# specific names come first. Scrapy 2.19 wraps handler errors in its own classes; the Twisted and stdlib
# names cover older Scrapy and errors raised before the handler.
_EXCEPTION_RULES: tuple[tuple[Outcome, frozenset[str]], ...] = (
    (Outcome.BLOCKED_ADDRESS, frozenset({"BlockedAddressError"})),
    (Outcome.INVALID_URL, frozenset({"InvalidURLError", "UnsupportedURLSchemeError", "NotSupported"})),
    (Outcome.TOO_LARGE, frozenset({"TooLargeError", "_DecompressionMaxSizeExceeded"})),
    (Outcome.HTTP_ERROR, frozenset({"ResponseHeadTooLarge"})),  # a head too big to read: a broken HTTP answer
    (Outcome.TLS_ERROR, frozenset({"SSLError", "TLSError", "CertificateError", "VerificationError"})),
    (Outcome.DNS_ERROR, frozenset({"CannotResolveHostError", "DNSLookupError", "gaierror"})),
    (Outcome.TIMEOUT, frozenset({"DownloadTimeoutError", "TimeoutError", "TCPTimedOutError", "UserTimeout"})),
    (
        Outcome.CONNECTION_ERROR,
        frozenset(
            {
                "DownloadConnectionRefusedError",
                "ConnectionRefusedError",
                "ResponseDataLossError",
                "DownloadFailedError",
                "ConnectionLost",
                "ConnectionDone",
                "ConnectionResetError",
                "ConnectionAbortedError",
                "ResponseFailed",
                "ResponseNeverReceived",
                "ConnectError",
                "NoRouteError",
                "PotentialDataLoss",
                "_DataLoss",
                "ConnectionError",
            }
        ),
    ),
)


def _class_names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def outcome_for_exception(exc: BaseException, causes: Iterable[BaseException] = ()) -> Outcome:
    """Outcome of a fetch that ended in an exception.

    ``causes`` are wrapped errors (Twisted's ``ResponseNeverReceived.reasons``, ``__cause__``): a TLS
    handshake failure arrives as a generic connection failure whose reason names the SSL error.
    """
    message = str(exc).lower()
    if "max size" in message or "maxsize" in message or "larger than download max size" in message:
        return Outcome.TOO_LARGE
    if "max redirections reached" in message:
        return Outcome.TOO_MANY_REDIRECTS
    if "forbidden by robots.txt" in message:
        return Outcome.ROBOTS_BLOCKED
    names = _class_names(exc)
    for cause in causes:
        names |= _class_names(cause)
        cause_message = str(cause).lower()
        if "ssl" in cause_message or "tls" in cause_message or "handshake" in cause_message:
            names.add("SSLError")
    for outcome, rule_names in _EXCEPTION_RULES:
        if names & rule_names:
            return outcome
    return Outcome.CONNECTION_ERROR
