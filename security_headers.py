"""Pure ASGI middleware adding browser security headers to every HTTP response."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.datastructures import MutableHeaders
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
    """Sets X-Content-Type-Options, X-Frame-Options, Referrer-Policy and a strict CSP.

    A response that already chose its own Content-Security-Policy (the docs pages) keeps it.
    """

    def __init__(
        self, app: ASGIApp, content_security_policy: str = API_CONTENT_SECURITY_POLICY
    ) -> None:
        self.app = app
        self.content_security_policy = content_security_policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS:
                    if name not in headers:
                        headers.append(name, value)  # no replace scan: hot path
                if "content-security-policy" not in headers:
                    headers.append("Content-Security-Policy", self.content_security_policy)
                if "server" in headers:  # uvicorn's own is off (--no-server-header); none here
                    del headers["server"]
            await send(message)

        await self.app(scope, receive, send_with_headers)
