"""The client's address: the one place that decides it (uvicorn runs with --no-proxy-headers).

By default no proxy is believed and the client is the TCP peer. Behind nginx,
`FORWARDED_ALLOW_IPS` names it: when the peer is one of those addresses, the client is the
rightmost `X-Forwarded-For` hop that is not a trusted proxy, and `X-Forwarded-Proto` gives the
scheme. A hop that is not an IP address was not written by a proxy of ours (nginx appends the
peer it saw, always an address), so the walk stops there and it never becomes the client.
"""

from __future__ import annotations

import contextlib
import ipaddress

from starlette.types import Scope

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
CACHE_BOUND = 4096  # parsing an address costs more than the rest of the check


class TrustedProxies:
    """FORWARDED_ALLOW_IPS: addresses or networks whose X-Forwarded-For is believed."""

    def __init__(self, entries: list[str]) -> None:
        self.networks: list[Network] = []
        for entry in entries:
            with contextlib.suppress(ValueError):  # Settings already warned about it
                self.networks.append(ipaddress.ip_network(entry, strict=False))
        self._answers: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, host: str) -> bool:
        known = self._answers.get(host)
        if known is None:
            address = ip_address(host)
            known = address is not None and any(address in n for n in self.networks)
            if len(self._answers) >= CACHE_BOUND:
                self._answers.clear()
            self._answers[host] = known
        return known


def ip_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def forwarded_hops(scope: Scope) -> list[str]:
    """Every X-Forwarded-For hop, in order (several header lines make one list)."""
    return [
        hop.strip()
        for key, value in scope.get("headers", ())
        if key == b"x-forwarded-for"
        for hop in value.decode("latin-1").split(",")
        if hop.strip()
    ]


def client_ip(scope: Scope, proxies: TrustedProxies) -> str:
    """The direct peer, or the rightmost X-Forwarded-For hop not run by a trusted proxy."""
    client = scope.get("client")
    address: str = client[0] if client else "unknown"
    if not proxies or not proxies.trusts(address):
        return address
    for hop in reversed(forwarded_hops(scope)):
        if ip_address(hop) is None:
            break  # forged: the last address a trusted proxy vouched for stands
        address = hop
        if not proxies.trusts(hop):
            break
    return address


def apply_trusted_proxy(scope: Scope, proxies: TrustedProxies) -> None:
    """Rewrites `scope["client"]` (and the scheme) from a trusted proxy's headers, so the rate
    limits, the access log and every route see the same client address (edge.EdgeMiddleware
    calls it for every HTTP request and WebSocket handshake, before anything reads them)."""
    client = scope.get("client")
    if not client or not proxies.trusts(client[0]):
        return
    scope["client"] = (client_ip(scope, proxies), client[1])
    for key, value in scope.get("headers", ()):
        if key == b"x-forwarded-proto":
            proto = value.decode("latin-1").split(",")[-1].strip().lower()
            if proto in ("http", "https"):
                secure = proto == "https"
                if scope["type"] == "websocket":
                    scope["scheme"] = "wss" if secure else "ws"
                else:
                    scope["scheme"] = proto
            break
