"""Which references can be fetched at all: a pure check made before a request is built."""

from __future__ import annotations

from urllib.parse import urlsplit

FETCHABLE_SCHEMES = frozenset({"http", "https"})


def invalid_url_reason(url: str) -> str | None:
    """Why ``url`` cannot be fetched over HTTP(S), or ``None`` when it can be tried."""
    if not url or not url.strip():
        return "empty URL"
    if any(ch in url for ch in "\r\n\t") or url != url.strip():
        return "URL contains whitespace or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a bad port
    except ValueError as exc:
        return f"malformed URL: {exc}"
    scheme = parts.scheme.lower()
    if not scheme:
        return "relative URL with no page to resolve it against"
    if scheme not in FETCHABLE_SCHEMES:
        return f"unsupported scheme {scheme!r}"
    host = parts.hostname
    if not host:
        return "URL has no host"
    if " " in host or any(ord(ch) < 0x21 for ch in host):
        return "host contains spaces or control characters"
    if port == 0:
        return "port 0"
    return None
