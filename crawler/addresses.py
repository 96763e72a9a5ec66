"""Which network addresses refwatch may connect to: a pure policy, applied by the address guard and again by
the download handler on the very address it dials.

Hostile snapshots can point at loopback, private ranges or the cloud metadata service (169.254.169.254);
a crawler running in someone's cloud account must not fetch those on a stranger's say-so. Only globally
routable unicast addresses are fetched, plus the networks the operator allows (``--allow-network CIDR``,
setting ``REFWATCH_ALLOW_NETWORKS``); ``--allow-private-networks`` allows everything (demo and tests).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

#: What a refused address is, named in the error (the first that contains it; otherwise "reserved").
_KINDS: tuple[tuple[str, tuple[Network, ...]], ...] = tuple(
    (kind, tuple(ipaddress.ip_network(n) for n in networks)) for kind, networks in (
        ("loopback", ("127.0.0.0/8", "::1/128")),
        ("private", ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")),
        ("link-local", ("169.254.0.0/16", "fe80::/10")),  # 169.254.169.254: the cloud metadata service
        ("shared (carrier-grade NAT)", ("100.64.0.0/10",)),
        ("documentation", ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")),
        ("multicast", ("224.0.0.0/4", "ff00::/8")),
        ("unspecified", ("0.0.0.0/8", "::/128")),
    )
)

#: Verdicts an AddressPolicy keeps (cleared when full): ~2.5 MiB at most.
_MAX_VERDICTS = 16_384


class BlockedAddressError(Exception):
    """The request's host is, or resolves to, an address refwatch must not connect to: ``blocked_address``.

    Raised by the address guard and by the download handler; the outcome rules know it by its name."""


def _parse(address: str) -> Address | None:
    try:
        return ipaddress.ip_address(address.strip("[]").split("%")[0])
    except ValueError:
        return None


def _embedded_ipv4(ip: Address) -> ipaddress.IPv4Address | None:
    if isinstance(ip, ipaddress.IPv6Address):
        return ip.ipv4_mapped or ip.sixtofour
    return None


def is_public_address(address: str) -> bool:
    """True for a globally routable unicast address; False for anything else, or anything unparsable."""
    ip = _parse(address)
    if ip is None:
        return False
    ip = _embedded_ipv4(ip) or ip
    return ip.is_global and not ip.is_multicast and not ip.is_reserved


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def address_kind(address: str) -> str:
    """A word for a non-public address, for error messages: loopback, private, link-local, ..."""
    ip = _parse(address)
    if ip is None:
        return "unparsable"
    ip = _embedded_ipv4(ip) or ip
    return next((kind for kind, networks in _KINDS if any(ip in n for n in networks)), "reserved")


def parse_network(text: str) -> Network:
    """``10.1.0.0/16``, ``fd00::/8`` or a bare address (one host) -> a network; ValueError saying what is wrong."""
    text = text.strip()
    try:
        return ipaddress.ip_network(text)
    except ValueError as exc:
        if "host bits set" in str(exc):
            hint = ipaddress.ip_network(text, strict=False)
            raise ValueError(f"{text!r} has host bits set (did you mean {hint}?)") from None
        raise ValueError(f"{text!r} is not an IP network in CIDR notation, such as 10.1.0.0/16 or fd00::/8") from None


@dataclass(frozen=True)
class AddressPolicy:
    """Public addresses, plus the allowed ``networks``; ``allow_all`` permits every address."""

    allow_all: bool = False
    networks: tuple[Network, ...] = ()
    # Verdicts by address: each request is checked twice (guard, connection) and ipaddress's checks cost
    # ~10 us; a crawl meets the same addresses again and again. Bounded: cleared when full.
    _verdicts: dict[str, bool] = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def permits(self, address: str) -> bool:
        if self.allow_all:
            return True
        verdict = self._verdicts.get(address)
        if verdict is None:
            if len(self._verdicts) >= _MAX_VERDICTS:
                self._verdicts.clear()
            verdict = self._verdicts[address] = self._judge(address)
        return verdict

    def _judge(self, address: str) -> bool:
        ip = _parse(address)
        if ip is None:
            return False
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None  # ::ffff:a.b.c.d is a.b.c.d
        if any(ip in n or (mapped is not None and mapped in n) for n in self.networks):
            return True
        return is_public_address(address)

    def refusal(self, host: str, address: str) -> str | None:
        """None when refwatch may connect to ``address`` (what ``host`` resolved to); otherwise why not."""
        if self.permits(address):
            return None
        where = f"{host} is" if host.strip("[]") == address else f"{host} resolves to {address},"
        hint = "" if not self.networks else " nor in an allowed network"
        return f"{where} a {address_kind(address)} address, not public{hint} (see --allow-network)"


@lru_cache(maxsize=16)
def address_policy(allow_all: bool, networks: tuple[str, ...]) -> AddressPolicy:
    """The policy for these setting values (cached: the download handler asks on every request)."""
    return AddressPolicy(allow_all, tuple(parse_network(text) for text in networks if text.strip()))


class _Settings(Protocol):  # Scrapy's Settings, without importing Scrapy here
    def getbool(self, name: str, default: bool = False) -> bool: ...
    def getlist(self, name: str, default: Any = None) -> list[str]: ...


def policy_from_settings(settings: _Settings) -> AddressPolicy:
    """``REFWATCH_ALLOW_PRIVATE_NETWORKS`` and ``REFWATCH_ALLOW_NETWORKS`` as a policy; ValueError names a
    value that is not a network."""
    return address_policy(settings.getbool("REFWATCH_ALLOW_PRIVATE_NETWORKS"),
                          tuple(settings.getlist("REFWATCH_ALLOW_NETWORKS")))


def parse_networks(texts: Iterable[str]) -> list[str]:
    """Validate ``--allow-network`` values; their canonical spelling (``10.1.0.0/16``), for settings."""
    return [str(parse_network(text)) for text in texts]
