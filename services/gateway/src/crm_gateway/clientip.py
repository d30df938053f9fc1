"""Which address a request comes from, behind the ingress.

X-Forwarded-For is honoured only when the peer itself is a trusted proxy (`CRM_TRUSTED_PROXIES`, CIDRs):
read from the right, each address a trusted proxy added is skipped, and the first one that is not a trusted
proxy is the client (anything left of it was written by the client and proves nothing). A peer outside the
trusted networks is the client, whatever headers it sends. X-Forwarded-Proto is taken from trusted peers too.

The result replaces the ASGI scope's `client`, so logs, per-source limits and `x-crm-client-ip` (the metadata
every service call carries; `crm_kit.context.client_ip()` there) all see the same address.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=4096)
def _parse(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address, or None for a string that is not one; cached, as a peer sends many requests."""
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        return None


def _trusted(address: str, networks: Sequence[Network]) -> bool:
    ip = _parse(address)
    if ip is None:
        return False
    return any(ip.version == net.version and ip in net for net in networks)


def resolve(scope: dict[str, Any], networks: Sequence[Network]) -> tuple[str, str | None]:
    """(client address, scheme from X-Forwarded-Proto or None) of an ASGI HTTP scope."""
    peer = (scope.get("client") or ("", 0))[0]
    if not networks or not _trusted(peer, networks):
        return peer, None
    forwarded: list[str] = []
    proto = None
    for name, value in scope["headers"]:
        if name == b"x-forwarded-for":
            forwarded += [part.strip() for part in value.decode("latin-1").split(",")]
        elif name == b"x-forwarded-proto":
            proto = value.decode("latin-1").split(",")[-1].strip().lower() or None
    client = peer
    for address in reversed(forwarded):
        if not address:
            continue
        client = address
        if not _trusted(address, networks):
            break
    parsed = _parse(client)
    # Not an address: the proxy is the closest thing we know.
    client = str(parsed) if parsed is not None else peer
    return client, proto if proto in ("http", "https") else None
