"""Pure ASGI middleware: request ids and timing, the last-resort 500, and the body size and time
limits."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from contextvars import ContextVar

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from errors import error_response

logger = logging.getLogger("blog.request")

REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
MAX_BODY_BYTES = 1024 * 1024
DEFAULT_BODY_TIMEOUT = 30.0  # seconds; Settings.request_body_timeout_seconds

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)


def incoming_request_id(scope: Scope) -> str:
    """The client's X-Request-ID when it is sane, else a fresh one."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            if REQUEST_ID_PATTERN.match(candidate):
                return candidate
            break
    return os.urandom(16).hex()  # as random as uuid4().hex, without building a UUID


class RequestContextMiddleware:
    """Tags every response with X-Request-ID and X-Process-Time; turns a crash into a clean 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = incoming_request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        response_started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                elapsed = f"{time.perf_counter() - started:.6f}".encode()
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"x-request-id", request_id.encode()),
                    (b"x-process-time", elapsed),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            logger.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if scope["type"] != "http" or response_started:
                raise
            body = {
                "detail": "Internal server error",
                "error_code": "INTERNAL_ERROR",
                "request_id": request_id,
            }
            await JSONResponse(body, status_code=500)(scope, receive, send_with_headers)
        finally:
            request_id_var.reset(token)


class BodySizeLimitMiddleware:
    """413 for bodies over the limit, decided from Content-Length or while streaming; 408 when
    the whole body has not arrived `timeout` seconds after the app first asked for it (a client
    trickling a body would otherwise hold a connection and a task indefinitely)."""

    def __init__(
        self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES, timeout: float = DEFAULT_BODY_TIMEOUT
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._too_large()(scope, receive, send)
                return
        received = 0
        deadline: float | None = None
        body_complete = False

        async def limited_receive() -> Message:
            nonlocal received, deadline, body_complete
            if body_complete:  # e.g. listening for a disconnect: no deadline
                return await receive()
            loop = asyncio.get_running_loop()
            if deadline is None:
                deadline = loop.time() + self.timeout
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                # FastAPI re-raises HTTPException from body reading; the handler makes it 408.
                raise HTTPException(
                    408,
                    f"The request body did not arrive within {self.timeout:g} seconds",
                    headers={"Connection": "close"},
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI re-raises HTTPException from body reading; the handler makes it 413.
                    raise HTTPException(413, self._detail())
                body_complete = not message.get("more_body", False)
            else:
                body_complete = True
            return message

        await self.app(scope, limited_receive, send)

    def _detail(self) -> str:
        return f"Request body is larger than {self.max_bytes} bytes"

    def _too_large(self) -> ASGIApp:
        return error_response(413, self._detail(), "PAYLOAD_TOO_LARGE")


class TrailingSlashMiddleware:
    """`/posts/` is answered as `/posts`, directly: Starlette's redirect to the slash-less path
    is built from the `Host` header, which the client controls (`Host: evil.example` made it
    `307 Location: http://evil.example/posts`). Routes are declared without trailing slashes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if len(path) > 1 and path[-1] == "/" and scope["type"] in ("http", "websocket"):
            scope["path"] = path.rstrip("/") or "/"
            raw_path = scope.get("raw_path")
            if raw_path:
                scope["raw_path"] = raw_path.rstrip(b"/") or b"/"
        await self.app(scope, receive, send)


def host_name(scope: Scope) -> str:
    """The `Host` header without its port, lower-cased ('' when absent)."""
    for name, value in scope.get("headers", ()):
        if name == b"host":
            host: str = value.decode("latin-1").strip().lower()
            if host.startswith("["):  # [IPv6]:port
                return host.split("]", 1)[0] + "]"
            return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return ""


class AllowedHostsMiddleware:
    """ALLOWED_HOSTS: a request whose `Host` is not listed gets 400 (a WebSocket handshake is
    refused). `*.example.com` admits every subdomain of example.com. Like Starlette's
    TrustedHostMiddleware, without its `www.` redirect (built from Host) and in the envelope."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str]) -> None:
        self.app = app
        self.exact = frozenset(host for host in allowed_hosts if not host.startswith("*."))
        self.suffixes = tuple(host[1:] for host in allowed_hosts if host.startswith("*."))

    def allows(self, host: str) -> bool:
        return host in self.exact or (bool(self.suffixes) and host.endswith(self.suffixes))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.allows(host_name(scope)):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "invalid host"})
            return
        await error_response(400, "Invalid host header", "BAD_REQUEST")(scope, receive, send)
