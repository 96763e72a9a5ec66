"""Which network addresses refwatch may connect to: a pure check, used by the address guard.

Hostile snapshots can point at loopback, private ranges or the cloud metadata service (169.254.169.254);
a crawler running in someone's cloud account must not fetch those on a stranger's say-so.
"""

from __future__ import annotations

import ipaddress


def is_public_address(address: str) -> bool:
    """True for a globally routable unicast address; False for anything else, or anything unparsable."""
    try:
        ip = ipaddress.ip_address(address.strip("[]").split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            ip = mapped
    return ip.is_global and not ip.is_multicast and not ip.is_reserved


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True
