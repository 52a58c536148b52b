"""The edge: one pure-ASGI layer around the application, with one `send` wrapper.

For an HTTP request, in this order:

1. a trailing slash is dropped from the path (strip_trailing_slash);
2. the client address and scheme come from a trusted proxy's headers (proxies.py);
3. the request id is chosen (request_id.py) and the clock starts;
4. a `Host` not in ALLOWED_HOSTS is answered 400 (hosts.py), a declared body over the limit 413,
   anything else goes to the app with its body read under the size and time limits
   (body_limit.py);
5. once answered: the metrics by route template and the access line (observability.py);
6. a crash before the response started becomes the 500 envelope with the request id.

Every response start gets all the edge's headers in one pass over its header list
(`response_headers`), the 400, 413 and 500 above included. A WebSocket handshake gets steps 1-3
and the Host check (a close with 1008); its crashes are logged with the request id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Iterable
from typing import Literal, get_args

from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from body_limit import DEFAULT_BODY_TIMEOUT, MAX_BODY_BYTES, BodyLimit
from hosts import AllowedHosts, host_name, invalid_host
from observability import request_finished
from proxies import TrustedProxies, apply_trusted_proxy
from request_id import incoming_request_id, request_id_var
from security_headers import (
    API_CONTENT_SECURITY_POLICY,
    RAW_SECURITY_HEADERS,
    STATIC_PREFIX,
    cache_control,
)

logger = logging.getLogger("blog.request")

# A `scope["state"]` key: raw headers an inner layer wants on the response, in place of any of
# the same names the route set (the rate limiter's X-RateLimit-*).
RESPONSE_HEADERS = "response_headers"

# What bench/layers.py may leave out to measure its cost (EdgeMiddleware's `leave_out`).
EdgePart = Literal["metrics_and_access_log", "security_headers", "body_limit"]
EDGE_PARTS = frozenset(get_args(EdgePart))

NO_NAMES: frozenset[bytes] = frozenset()


def strip_trailing_slash(scope: Scope) -> None:
    """`/posts/` is answered as `/posts`, directly: Starlette's redirect to the slash-less path
    is built from the `Host` header, which the client controls (`Host: evil.example` made it
    `307 Location: http://evil.example/posts`). Routes are declared without trailing slashes."""
    path: str = scope.get("path", "")
    if len(path) > 1 and path[-1] == "/":
        scope["path"] = path.rstrip("/") or "/"
        raw_path = scope.get("raw_path")
        if raw_path:
            scope["raw_path"] = raw_path.rstrip(b"/") or b"/"


def internal_error(request_id: str) -> Response:
    """The answer to a crash: no traceback, the request id to quote."""
    body = {
        "detail": "Internal server error",
        "error_code": "INTERNAL_ERROR",
        "request_id": request_id,
    }
    return JSONResponse(body, status_code=500)


class EdgeMiddleware:
    """Request id, timing, metrics, access line, client address, Host check, body limits,
    trailing slash and the security headers of every response (see the module's docstring).

    `leave_out` is for bench/layers.py alone, which measures what each part costs."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        forwarded_allow_ips: Iterable[str] = (),
        allowed_hosts: Iterable[str] = ("*",),
        max_body_bytes: int = MAX_BODY_BYTES,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
        content_security_policy: str = API_CONTENT_SECURITY_POLICY,
        leave_out: Collection[EdgePart] = (),
    ) -> None:
        unknown = set(leave_out) - EDGE_PARTS
        if unknown:
            raise ValueError(f"the edge has no parts {sorted(unknown)}")
        self.app = app
        self.proxies = TrustedProxies(list(forwarded_allow_ips))
        hosts = list(allowed_hosts)
        self.allowed_hosts = None if "*" in hosts else AllowedHosts(hosts)
        self.body_limit = (
            None if "body_limit" in leave_out else BodyLimit(max_body_bytes, body_timeout)
        )
        self.observe = "metrics_and_access_log" not in leave_out
        self.csp = (
            None if "security_headers" in leave_out else content_security_policy.encode("latin-1")
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await self.websocket(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        strip_trailing_slash(scope)
        if self.proxies:
            apply_trusted_proxy(scope, self.proxies)
        state = scope.setdefault("state", {})
        request_id = state["request_id"] = incoming_request_id(scope)
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 0  # until the response starts

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = self.response_headers(scope, message, request_id, started)
            await send(message)

        try:
            try:
                if self.wrong_host(scope):
                    await invalid_host()(scope, receive, send_with_headers)
                elif self.body_limit is None:
                    await self.app(scope, receive, send_with_headers)
                elif self.body_limit.declared_too_large(scope):
                    await self.body_limit.too_large()(scope, receive, send_with_headers)
                else:
                    limited = self.body_limit.limited(receive)
                    await self.app(scope, limited, send_with_headers)
            finally:
                if self.observe:  # no response yet: an exception, answered 500 below
                    request_finished(scope, status or 500, time.perf_counter() - started)
        except Exception:
            logger.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if status:
                raise
            state.pop(RESPONSE_HEADERS, None)  # meant for the route's answer
            await internal_error(request_id)(scope, receive, send_with_headers)
        finally:
            request_id_var.reset(token)

    async def websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A handshake: the path, the client address, the request id and the Host check."""
        strip_trailing_slash(scope)
        if self.proxies:
            apply_trusted_proxy(scope, self.proxies)
        request_id = incoming_request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        try:
            if self.wrong_host(scope):
                await send({"type": "websocket.close", "code": 1008, "reason": "invalid host"})
            else:
                await self.app(scope, receive, send)
        except Exception:
            logger.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            raise
        finally:
            request_id_var.reset(token)

    def wrong_host(self, scope: Scope) -> bool:
        """ALLOWED_HOSTS is set and the request's `Host` is not in it."""
        return self.allowed_hosts is not None and not self.allowed_hosts.allows(host_name(scope))

    def response_headers(
        self, scope: Scope, message: Message, request_id: str, started: float
    ) -> list[tuple[bytes, bytes]]:
        """The response's headers with the edge's added, in one pass over them (a MutableHeaders
        lookup per header would scan and decode the whole list each time):

        - the inner layers' RESPONSE_HEADERS, in place of the route's of the same names;
        - X-Request-ID and X-Process-Time (seconds from the request's arrival at the edge);
        - no `server` (uvicorn's own is off, --no-server-header);
        - X-Content-Type-Options, X-Frame-Options, Referrer-Policy, Content-Security-Policy and
          Cache-Control (see security_headers.cache_control), each unless the response chose
          its own (the docs pages choose their policy, the static assets their caching);
        - `Vary: Authorization` joined to the response's first Vary (every route reads the
          token: a bad one is 401 everywhere, a good one may show drafts), except on the
          static assets.
        """
        elapsed = f"{time.perf_counter() - started:.6f}".encode()
        added: list[tuple[bytes, bytes]] = scope["state"].get(RESPONSE_HEADERS) or []
        replaced = {name for name, _ in added} if added else NO_NAMES
        headers: list[tuple[bytes, bytes]] = []
        present: set[bytes] = set()
        vary: bytes | None = None
        for name, value in message.get("headers", ()):
            if name == b"server" or name in replaced:
                continue
            if name == b"vary":
                if vary is None:
                    vary = value
                continue
            present.add(name)
            headers.append((name, value))
        headers += added
        headers.append((b"x-request-id", request_id.encode()))
        headers.append((b"x-process-time", elapsed))
        if self.csp is None:  # bench/layers.py, measuring the edge without the security headers
            if vary is not None:
                headers.append((b"vary", vary))
            return headers
        path: str = scope["path"]
        if not path.startswith(STATIC_PREFIX):
            if b"cache-control" not in present:
                authorized = any(name == b"authorization" for name, _ in scope.get("headers", ()))
                policy = cache_control(path, scope["method"], message["status"], authorized)
                headers.append((b"cache-control", policy.encode("latin-1")))
            vary = b"Authorization" if vary is None else vary + b", Authorization"
        if vary is not None:
            headers.append((b"vary", vary))
        for name, value in RAW_SECURITY_HEADERS:
            if name not in present:
                headers.append((name, value))
        if b"content-security-policy" not in present:
            headers.append((b"content-security-policy", self.csp))
        return headers
