"""Pure ASGI middleware adding browser security and caching headers to every HTTP response."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# JSON never needs to load, run, frame or embed anything.
API_CONTENT_SECURITY_POLICY = (
    "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)

SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
)

RAW_SECURITY_HEADERS = tuple(
    (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in SECURITY_HEADERS
)

# Never stored by any cache: liveness, readiness and metrics must be fresh; the caller's account.
NO_STORE_PATHS = frozenset({"/", "/metrics", "/users/me"})
NO_STORE_PREFIXES = ("/health/",)
STATIC_PREFIX = "/static/"  # versioned assets: offline_docs sets their own policy
STORABLE_STATUSES = frozenset({200, 203, 204, 206, 304})


def cache_control(path: str, method: str, status: int, authorized: bool) -> str:
    """What a cache may do with an answer that did not say it itself.

    With a token, the answer is the caller's (`private`; drafts need one). A public read may
    be stored by a shared cache but must be revalidated each time (`no-cache`; posts carry an
    ETag), so no one is served a stale read after a write. Everything else, errors and writes
    included, is not stored."""
    storable = (
        method in ("GET", "HEAD")
        and status in STORABLE_STATUSES
        and path not in NO_STORE_PATHS
        and not path.startswith(NO_STORE_PREFIXES)
    )
    if authorized:
        return "private" if storable else "private, no-store"
    return "public, no-cache" if storable else "no-store"


def docs_content_security_policy(script_hashes: Iterable[str] = ()) -> str:
    """The policy of the Swagger UI and ReDoc pages: only this origin's assets and API.

    Inline scripts run only when listed by hash; inline styles are allowed because both UIs set
    styles at run time; ReDoc's search runs in a worker made from a blob: URL.
    """
    scripts = " ".join(["'self'", *script_hashes])
    return (
        "default-src 'none'; "
        f"script-src {scripts}; "
        "style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; "
        "font-src 'self' data:; "
        "connect-src 'self'; "
        "worker-src 'self' blob:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )


class SecurityHeadersMiddleware:
    """Sets X-Content-Type-Options, X-Frame-Options, Referrer-Policy and a strict CSP, drops
    `server`, and says how the answer may be cached: `Cache-Control` (see cache_control) and
    `Vary: Authorization` (every route reads the token: a bad one is 401 everywhere, a good one
    may show drafts), except on the static assets.

    A response that already chose its own Content-Security-Policy (the docs pages) or
    Cache-Control keeps it.
    """

    def __init__(
        self, app: ASGIApp, content_security_policy: str = API_CONTENT_SECURITY_POLICY
    ) -> None:
        self.app = app
        self.content_security_policy = content_security_policy
        self._csp = content_security_policy.encode("latin-1")

    def with_headers(self, scope: Scope, message: Message) -> list[tuple[bytes, bytes]]:
        """The response's headers with ours added, in one pass over them (a MutableHeaders
        lookup per header would scan and decode the whole list each time)."""
        headers: list[tuple[bytes, bytes]] = []
        present: set[bytes] = set()
        vary: bytes | None = None
        for name, value in message.get("headers", ()):
            if name == b"server":  # uvicorn's own is off (--no-server-header); none here
                continue
            if name == b"vary":
                if vary is None:
                    vary = value
                continue
            present.add(name)
            headers.append((name, value))
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
            headers.append((b"content-security-policy", self._csp))
        return headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = self.with_headers(scope, message)
            await send(message)

        await self.app(scope, receive, send_with_headers)
