"""The error envelope, body size limit, request ids, timing and the last-resort 500."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from conftest import create_post
from core_helpers import SANE_REQUEST_ID, assert_error

from config import Settings
from main import create_app

MIB = 1024 * 1024
JSON = {"Content-Type": "application/json"}


def post_body(size: int, title: str = "Big one") -> bytes:
    """A valid post (the padding is an unknown field, ignored) of exactly `size` bytes."""
    empty = json.dumps({"title": title, "content": "small", "padding": ""}).encode()
    body = json.dumps({"title": title, "content": "small", "padding": "p" * (size - len(empty))})
    encoded = body.encode()
    assert len(encoded) == size
    return encoded


async def chunked(data: bytes, chunk: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), chunk):
        yield data[start : start + chunk]


async def total_posts(client: httpx.AsyncClient) -> int:
    response = await client.get("/posts", params={"count": "true"})
    return int(response.headers["x-total-count"])


# --- envelopes -----------------------------------------------------------------------------------


async def test_unknown_route(client: httpx.AsyncClient) -> None:
    for url in ("/nope", "/posts/1/nothing", "/auth"):
        response = await client.get(url)
        assert_error(response, 404, "NOT_FOUND")
        assert set(response.json()) == {"detail", "error_code"}
        assert response.headers["content-type"].startswith("application/json")


async def test_method_not_allowed(client: httpx.AsyncClient) -> None:
    for method, url in (("DELETE", "/posts"), ("PUT", "/auth/login"), ("GET", "/auth/register")):
        response = await client.request(method, url)
        assert_error(response, 405, "METHOD_NOT_ALLOWED")
        assert set(response.json()) == {"detail", "error_code"}

    def allowed(response: httpx.Response) -> set[str]:
        return {method.strip() for method in response.headers.get("allow", "").split(",")}

    assert allowed(await client.put("/auth/login")) == {"POST"}
    listing = allowed(await client.delete("/posts"))  # every route of the path, not the first
    assert {"GET", "POST"} <= listing and "DELETE" not in listing
    one = allowed(await client.post("/posts/1"))
    assert {"GET", "PUT", "PATCH", "DELETE"} <= one and "POST" not in one


async def test_validation_error_envelope(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    response = await client.post("/posts", json={"title": 5}, headers=user_headers)
    body = assert_error(response, 422, "VALIDATION_ERROR")
    assert set(body) == {"detail", "error_code"}
    for item in body["detail"]:
        assert set(item) == {"loc", "msg", "type"}
        assert isinstance(item["loc"], list) and item["loc"][0] == "body"
        assert isinstance(item["msg"], str) and item["msg"]
        assert isinstance(item["type"], str) and item["type"]
    locs = {tuple(item["loc"]) for item in body["detail"]}
    assert {("body", "title"), ("body", "content")} <= locs
    query = assert_error(await client.get("/posts?limit=lots"), 422, "VALIDATION_ERROR")
    assert query["detail"][0]["loc"] == ["query", "limit"]
    assert set(query["detail"][0]) == {"loc", "msg", "type"}


async def test_malformed_json_body(
    client: httpx.AsyncClient, user_headers: dict[str, str], subtests: pytest.Subtests
) -> None:
    for raw in (b'{"title": "x",', b"{not json}", b"", b"[1, 2]", b'"just a string"', b"\xff\xfe"):
        with subtests.test(raw=raw):
            response = await client.post("/posts", content=raw, headers={**user_headers, **JSON})
            body = assert_error(response, 422, "VALIDATION_ERROR")
            assert all(set(item) == {"loc", "msg", "type"} for item in body["detail"])
    assert await total_posts(client) == 0


async def test_auth_errors_use_the_envelope(client: httpx.AsyncClient) -> None:
    response = await client.get("/users/me")
    assert_error(response, 401, "NOT_AUTHENTICATED")
    assert set(response.json()) == {"detail", "error_code"}


# --- body size limit -----------------------------------------------------------------------------


async def test_body_over_the_limit_with_content_length(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    body = post_body(MIB + 1)
    response = await client.post("/posts", content=body, headers={**user_headers, **JSON})
    assert response.request.headers["content-length"] == str(MIB + 1)
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert set(response.json()) == {"detail", "error_code"}
    assert response.headers["x-request-id"]
    huge = await client.post("/posts", content=post_body(3 * MIB), headers={**user_headers, **JSON})
    assert_error(huge, 413, "PAYLOAD_TOO_LARGE")
    assert await total_posts(client) == 0


async def test_body_over_the_limit_streamed(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    for size in (MIB + 1, 2 * MIB + 12345):
        response = await client.post(
            "/posts", content=chunked(post_body(size)), headers={**user_headers, **JSON}
        )
        assert "content-length" not in response.request.headers
        assert response.request.headers["transfer-encoding"] == "chunked"
        assert_error(response, 413, "PAYLOAD_TOO_LARGE")
        assert response.headers["x-request-id"]
    assert await total_posts(client) == 0


async def test_body_over_the_limit_with_a_lying_content_length(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    """A small Content-Length does not let a big streamed body through."""

    async def body() -> AsyncIterator[bytes]:
        async for part in chunked(post_body(MIB + 100)):
            yield part

    response = await client.post(
        "/posts", content=body(), headers={**user_headers, **JSON, "Content-Length": "10"}
    )
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert await total_posts(client) == 0


async def test_body_at_the_limit_is_accepted(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    response = await client.post(
        "/posts", content=post_body(MIB, "Exactly"), headers={**user_headers, **JSON}
    )
    assert response.status_code == 201, response.text[:200]
    streamed = await client.post(
        "/posts", content=chunked(post_body(MIB, "Streamed")), headers={**user_headers, **JSON}
    )
    assert "content-length" not in streamed.request.headers
    assert streamed.status_code == 201, streamed.text[:200]
    assert await total_posts(client) == 2


# --- request ids and timing ----------------------------------------------------------------------


async def test_sane_request_id_is_echoed(client: httpx.AsyncClient) -> None:
    for request_id in ("abc", "A.b_C-9", "x" * 128, "0", "req-2026-11-25.1"):
        for url in ("/posts", "/nope"):
            response = await client.get(url, headers={"X-Request-ID": request_id})
            assert response.headers["x-request-id"] == request_id


INSANE_REQUEST_IDS: list[str | bytes] = [
    "x" * 129,
    "has space",
    "slash/inside",
    "semi;colon",
    "quote'",
    "percent%20",
    "ünï".encode(),
    "",
]


async def test_insane_request_id_is_replaced(
    client: httpx.AsyncClient, subtests: pytest.Subtests
) -> None:
    for request_id in INSANE_REQUEST_IDS:
        with subtests.test(request_id=request_id):
            raw = request_id if isinstance(request_id, bytes) else request_id.encode()
            response = await client.get("/posts", headers={b"X-Request-ID": raw})
            assert response.status_code == 200
            replaced = response.headers["x-request-id"]
            sent = request_id.decode() if isinstance(request_id, bytes) else request_id
            assert replaced != sent
            assert SANE_REQUEST_ID.match(replaced)


async def test_every_response_has_request_id_and_timing(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    post = await create_post(client, user_headers, "Tagged")
    etag = (await client.get(f"/posts/{post['id']}")).headers["etag"]
    responses = {
        200: await client.get("/posts"),
        201: await client.post(
            "/posts", json={"title": "T2", "content": "c"}, headers=user_headers
        ),
        304: await client.get(f"/posts/{post['id']}", headers={"If-None-Match": etag}),
        401: await client.get("/users/me"),
        404: await client.get("/missing"),
        405: await client.delete("/posts"),
        412: await client.patch(
            f"/posts/{post['id']}", json={"title": "x"}, headers={**user_headers, "If-Match": "x"}
        ),
        413: await client.post("/posts", content=post_body(MIB + 1), headers=JSON),
        422: await client.get("/posts?limit=0"),
        204: await client.delete(f"/posts/{post['id']}", headers=user_headers),
    }
    seen = set()
    for status, response in responses.items():
        assert response.status_code == status, (status, response.text)
        request_id = response.headers["x-request-id"]
        assert SANE_REQUEST_ID.match(request_id)
        seen.add(request_id)
        elapsed = float(response.headers["x-process-time"])
        assert 0 <= elapsed < 60
    assert len(seen) == len(responses)  # a fresh id each time
    echoed = await client.get("/nope", headers={"X-Request-ID": "trace-me"})
    assert echoed.headers["x-request-id"] == "trace-me"


# --- the last-resort 500 -------------------------------------------------------------------------


async def test_unhandled_error_is_a_clean_500(settings: Settings) -> None:
    application = create_app(settings)

    async def explode() -> dict[str, Any]:
        raise RuntimeError("secret internals: password=hunter2")

    application.add_api_route("/boom", explode, methods=["GET"])
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            response = await http.get("/boom")
            assert response.status_code == 500
            request_id = response.headers["x-request-id"]
            assert SANE_REQUEST_ID.match(request_id)
            assert response.json() == {
                "detail": "Internal server error",
                "error_code": "INTERNAL_ERROR",
                "request_id": request_id,
            }
            for leak in ("Traceback", "RuntimeError", "hunter2", "secret internals", "File "):
                assert leak not in response.text
            assert float(response.headers["x-process-time"]) >= 0

            traced = await http.get("/boom", headers={"X-Request-ID": "incident-42"})
            assert traced.status_code == 500
            assert traced.headers["x-request-id"] == "incident-42"
            assert traced.json()["request_id"] == "incident-42"

            # the service keeps answering afterwards
            assert (await http.get("/posts")).status_code == 200


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
async def test_a_json_body_without_its_content_type_says_so(
    client: httpx.AsyncClient, user_headers: dict[str, str], content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    register = json.dumps({"username": "carol", "email": "c@example.com", "password": "x" * 12})
    post = json.dumps({"title": "Typed", "content": "Body"})
    for path, body, extra in (("/auth/register", register, {}), ("/posts", post, user_headers)):
        response = await client.post(path, content=body, headers={**headers, **extra})
        assert response.status_code == 422, response.text
        assert response.json()["error_code"] == "VALIDATION_ERROR"
        (error,) = response.json()["detail"]
        assert error["loc"] == ["body"]
        assert "Content-Type: application/json" in error["msg"]
        assert "JSON object" in error["msg"]
    # Declared JSON that is not an object keeps pydantic's own words.
    wrong_shape = await client.post("/auth/register", json=[1], headers=JSON)
    assert "Content-Type" not in wrong_shape.json()["detail"][0]["msg"]
    assert (await client.post("/auth/register", content=register, headers=JSON)).status_code == 201
