"""Pure classification rules: status codes, bodies, exceptions, URLs, addresses, Retry-After."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from scrapy.exceptions import (
    CannotResolveHostError,
    DownloadCancelledError,
    DownloadConnectionRefusedError,
    DownloadTimeoutError,
    IgnoreRequest,
    ResponseDataLossError,
)
from twisted.internet.error import DNSLookupError, TimeoutError as TwistedTimeoutError
from twisted.web._newclient import ResponseNeverReceived
from twisted.python.failure import Failure

from crawler.addresses import is_public_address
from crawler.outcomes import Outcome, outcome_for_body, outcome_for_exception, outcome_for_status
from crawler.urls import invalid_url_reason
from middlewares.address_guard import BlockedAddressError
from middlewares.backoff import parse_retry_after


def test_outcome_words_are_exactly_the_documented_ones() -> None:
    assert [o.value for o in Outcome] == [
        "ok", "placeholder", "not_found", "gone", "forbidden", "http_error", "server_error", "not_image",
        "decode_error", "too_large", "timeout", "dns_error", "connection_error", "tls_error",
        "too_many_redirects", "invalid_url", "blocked_address", "robots_blocked",
    ]


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(200, None), (204, None), (404, Outcome.NOT_FOUND), (410, Outcome.GONE), (401, Outcome.FORBIDDEN),
     (403, Outcome.FORBIDDEN), (451, Outcome.FORBIDDEN), (400, Outcome.HTTP_ERROR), (429, Outcome.HTTP_ERROR),
     (304, Outcome.HTTP_ERROR), (500, Outcome.SERVER_ERROR), (503, Outcome.SERVER_ERROR),
     (599, Outcome.SERVER_ERROR)],
)
def test_status_rules(status: int, outcome: Outcome | None) -> None:
    assert outcome_for_status(status) == outcome


def test_body_rules_judge_bytes_not_headers() -> None:
    assert outcome_for_body(decodable=True, looks_like_image=True, content_type="text/html") is Outcome.OK
    assert outcome_for_body(decodable=False, looks_like_image=False, content_type="text/html") is Outcome.NOT_IMAGE
    assert outcome_for_body(decodable=False, looks_like_image=False, content_type=None) is Outcome.NOT_IMAGE
    assert outcome_for_body(decodable=False, looks_like_image=False,
                            content_type="image/jpeg; q=1") is Outcome.DECODE_ERROR
    assert outcome_for_body(decodable=False, looks_like_image=True, content_type="text/plain") is Outcome.DECODE_ERROR


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (DownloadTimeoutError("took too long"), Outcome.TIMEOUT),
        (TwistedTimeoutError(), Outcome.TIMEOUT),
        (CannotResolveHostError("nope"), Outcome.DNS_ERROR),
        (DNSLookupError("nope"), Outcome.DNS_ERROR),
        (socket.gaierror(-2, "Name or service not known"), Outcome.DNS_ERROR),
        (DownloadConnectionRefusedError("refused"), Outcome.CONNECTION_ERROR),
        (ResponseDataLossError("cut short"), Outcome.CONNECTION_ERROR),
        (DownloadCancelledError("Cancelling download of x: expected response size (9) larger than download "
                                "max size (1)."), Outcome.TOO_LARGE),
        (IgnoreRequest("max redirections reached"), Outcome.TOO_MANY_REDIRECTS),
        (IgnoreRequest("Forbidden by robots.txt"), Outcome.ROBOTS_BLOCKED),
        (BlockedAddressError("x resolves to non-public address 10.0.0.1"), Outcome.BLOCKED_ADDRESS),
        (RuntimeError("something unforeseen"), Outcome.CONNECTION_ERROR),
    ],
)
def test_exception_rules(exc: BaseException, outcome: Outcome) -> None:
    assert outcome_for_exception(exc) is outcome


def test_tls_failure_is_named_by_its_wrapped_reason() -> None:
    from OpenSSL.SSL import Error as SSLError

    wrapped = ResponseNeverReceived([Failure(SSLError([("SSL routines", "", "wrong version number")]))])
    assert outcome_for_exception(wrapped, [r.value for r in wrapped.reasons]) is Outcome.TLS_ERROR


@pytest.mark.parametrize(
    ("url", "ok"),
    [("http://example.com/a.jpg", True), ("https://example.com:8443/a b.jpg", True), ("", False),
     ("not a url", False), ("/relative/only.jpg", False), ("ftp://example.com/a.jpg", False),
     ("data:image/png;base64,AAAA", False), ("http:///nohost.jpg", False), ("http://exa mple.com/", False),
     ("http://example.com:99999/", False), ("http://example.com/a\n.jpg", False)],
)
def test_invalid_url_reason(url: str, ok: bool) -> None:
    assert (invalid_url_reason(url) is None) is ok


@pytest.mark.parametrize(
    ("address", "public"),
    [("93.184.216.34", True), ("2606:2800:220:1:248:1893:25c8:1946", True), ("127.0.0.1", False),
     ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False), ("169.254.169.254", False),
     ("0.0.0.0", False), ("::1", False), ("fe80::1", False), ("fd00::1", False), ("::ffff:127.0.0.1", False),
     ("100.64.0.1", False), ("224.0.0.1", False), ("not-an-ip", False)],
)
def test_is_public_address(address: str, public: bool) -> None:
    assert is_public_address(address) is public


def test_parse_retry_after() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now.timestamp()) == 30.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now.timestamp()) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_code_executing_consoles_are_off_and_bodies_are_never_cached() -> None:
    from crawler.runner import project_settings

    settings = project_settings()
    assert settings.getbool("TELNETCONSOLE_ENABLED") is False
    assert settings.getbool("REMOTE_CONTROL_ENABLED") is False
    assert settings.getbool("HTTPCACHE_ENABLED") is False
    assert not any("FilesPipeline" in p or "ImagesPipeline" in p for p in settings.getdict("ITEM_PIPELINES"))
