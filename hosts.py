"""ALLOWED_HOSTS: which `Host` headers the service answers. `*.example.com` admits every
subdomain of example.com. Like Starlette's TrustedHostMiddleware, without its `www.` redirect
(built from Host) and with the refusal in the error envelope."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.responses import Response
from starlette.types import Scope

from errors import error_response


def host_name(scope: Scope) -> str:
    """The `Host` header without its port, lower-cased ('' when absent)."""
    for name, value in scope.get("headers", ()):
        if name == b"host":
            host: str = value.decode("latin-1").strip().lower()
            if host.startswith("["):  # [IPv6]:port
                return host.split("]", 1)[0] + "]"
            return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return ""


class AllowedHosts:
    def __init__(self, allowed_hosts: Iterable[str]) -> None:
        hosts = list(allowed_hosts)
        self.exact = frozenset(host for host in hosts if not host.startswith("*."))
        self.suffixes = tuple(host[1:] for host in hosts if host.startswith("*."))

    def allows(self, host: str) -> bool:
        return host in self.exact or (bool(self.suffixes) and host.endswith(self.suffixes))


def invalid_host() -> Response:
    """The answer to an HTTP request whose Host is not allowed (a WebSocket handshake is closed
    with 1008 instead)."""
    return error_response(400, "Invalid host header", "BAD_REQUEST")
