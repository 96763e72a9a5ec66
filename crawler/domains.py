"""Registrable domains ("eTLD+1"), the unit attrition and placeholders are counted by.

From the Public Suffix List that the ``publicsuffixlist`` package ships (no network look-up at run time; a
newer list comes with a newer package). ``i.imgur.com`` -> ``imgur.com``, ``a.b.github.io`` ->
``b.github.io``, ``x.bar.co.uk`` -> ``bar.co.uk``. An IP address is its own domain; a host that is itself a
public suffix, or has none (``localhost``), is returned as it is, so every fetchable URL has a domain.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from urllib.parse import urlsplit

from publicsuffixlist import PublicSuffixList

_PSL = PublicSuffixList()  # read once at import: the list is immutable for the life of the process


@lru_cache(maxsize=65536)
def registrable_domain(host: str) -> str | None:
    """The registrable domain of ``host`` (lowercase, no trailing dot); None for an empty host."""
    host = host.strip().rstrip(".").lower()
    if not host:
        return None
    if host.startswith("[") or _is_ip(host):
        return host.strip("[]")
    return _PSL.privatesuffix(host) or host


def url_domain(url: str) -> str | None:
    """The registrable domain of ``url``'s host; None when the URL has no parsable host."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    return registrable_domain(host) if host else None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
