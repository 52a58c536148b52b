"""The edge layer (edge.py) on its own, around small ASGI apps: the headers inner layers ask for,
crashes, WebSocket handshakes, other scopes, and the parts bench/layers.py leaves out.

The application's own behaviour through it (security headers, Host check, body limits, trailing
slashes, metrics, the access line) is tested with the app in test_security_headers.py,
test_http_hygiene.py, test_security.py and test_observability.py."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.responses import PlainTextResponse
from starlette.types import Message, Receive, Scope, Send

import edge
from edge import RESPONSE_HEADERS, EdgeMiddleware
from request_id import request_id_var

RATE_LIMIT = [(b"x-ratelimit-limit", b"10"), (b"x-ratelimit-remaining", b"9")]


async def receive() -> Message:
    raise AssertionError("not asked for")


async def get(app: Any, path: str = "/posts", **options: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        return await http.get(path, **options)


async def test_inner_layers_headers_replace_those_of_the_same_names() -> None:
    """What the rate limiter leaves in scope state is on the response once, in place of the
    route's own header of that name; the others the route set stay."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scope["state"][RESPONSE_HEADERS] = RATE_LIMIT
        route_says = {"X-RateLimit-Limit": "99", "ETag": '"1-1"'}
        await PlainTextResponse("hi", headers=route_says)(scope, receive, send)

    response = await get(EdgeMiddleware(app))
    assert response.status_code == 200
    assert response.headers.get_list("x-ratelimit-limit") == ["10"]
    assert response.headers["x-ratelimit-remaining"] == "9"
    assert response.headers["etag"] == '"1-1"'
    assert response.headers["x-request-id"] and response.headers["x-process-time"]
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_a_crash_is_the_500_envelope_without_the_route_s_headers() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scope["state"][RESPONSE_HEADERS] = RATE_LIMIT
        raise RuntimeError("boom")

    response = await get(EdgeMiddleware(app), headers={"X-Request-ID": "crash-1"})
    assert response.status_code == 500
    assert response.json() == {
        "detail": "Internal server error",
        "error_code": "INTERNAL_ERROR",
        "request_id": "crash-1",
    }
    assert response.headers["x-request-id"] == "crash-1"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "x-ratelimit-limit" not in response.headers


async def test_a_crash_after_the_response_started_is_raised() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("boom")

    transport = httpx.ASGITransport(app=EdgeMiddleware(app))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        with pytest.raises(RuntimeError, match="boom"):
            await http.get("/posts")


def websocket_scope(host: bytes) -> dict[str, Any]:
    return {
        "type": "websocket",
        "path": "/ws/posts/1/",
        "raw_path": b"/ws/posts/1/",
        "client": ("10.0.0.1", 5),
        "scheme": "ws",
        "headers": [
            (b"host", host),
            (b"x-forwarded-for", b"198.51.100.4"),
            (b"x-forwarded-proto", b"https"),
            (b"x-request-id", b"ws-1"),
        ],
    }


async def test_websocket_handshakes_get_the_path_the_client_the_request_id_and_the_host_check() -> (
    None
):
    seen: list[tuple[Any, ...]] = []
    sent: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(
            (
                scope["path"],
                scope["raw_path"],
                scope["client"],
                scope["scheme"],
                scope["state"]["request_id"],
                request_id_var.get(),
            )
        )

    async def send(message: Message) -> None:
        sent.append(message)

    layer = EdgeMiddleware(app, forwarded_allow_ips=["10.0.0.1"], allowed_hosts=["blog.example"])
    await layer(websocket_scope(b"blog.example"), receive, send)
    assert seen == [("/ws/posts/1", b"/ws/posts/1", ("198.51.100.4", 5), "wss", "ws-1", "ws-1")]
    assert sent == []  # nothing added to a handshake
    assert request_id_var.get() is None

    seen.clear()
    await layer(websocket_scope(b"evil.example"), receive, send)
    assert seen == []
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": "invalid host"}]


async def test_other_scopes_pass_through_untouched() -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(dict(scope))

    lifespan = {"type": "lifespan", "path": "/x/"}
    layer = EdgeMiddleware(app, allowed_hosts=["blog.example"])

    async def send(message: Message) -> None:
        raise AssertionError("nothing to send")

    await layer(lifespan, receive, send)
    assert seen == [{"type": "lifespan", "path": "/x/"}]


async def test_the_profiler_can_leave_out_one_part(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/layers.py's `leave_out`: each part alone, nothing else changes."""
    finished: list[int] = []
    monkeypatch.setattr(
        edge, "request_finished", lambda scope, status, seconds: finished.append(status)
    )
    app = PlainTextResponse("hi")
    too_big = {"Content-Length": str(2 * 1024 * 1024)}

    response = await get(EdgeMiddleware(app, leave_out=["security_headers"]))
    assert "content-security-policy" not in response.headers
    assert response.headers["x-request-id"]
    assert (
        await get(EdgeMiddleware(app, leave_out=["body_limit"]), headers=too_big)
    ).status_code == 200
    assert (await get(EdgeMiddleware(app), headers=too_big)).status_code == 413
    assert finished == [200, 200, 413]
    await get(EdgeMiddleware(app, leave_out=["metrics_and_access_log"]))
    assert finished == [200, 200, 413]
    with pytest.raises(ValueError, match="request_id"):
        EdgeMiddleware(app, leave_out=["request_id"])  # type: ignore[list-item]
