"""Host headers, caching headers, `/metrics` access and cost, docs assets (issue 13)."""

from __future__ import annotations

import math

import httpx
import pytest
from fastapi import FastAPI

import observability
from tests.conftest import create_post


def client_for(app: FastAPI, base_url: str = "http://test") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url)


# --- Host and redirects --------------------------------------------------------------------------


async def test_trailing_slashes_are_answered_directly_never_redirected_to_the_host(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    post = await create_post(client, user_headers, "Slash post")
    evil = {"Host": "evil.example"}
    for path in (
        "/posts/",
        f"/posts/{post['id']}/",
        f"/posts/{post['id']}/comments/",
        "/health/ready/",
    ):
        response = await client.get(path, headers=evil)
        assert response.status_code == 200, (path, response.status_code)
        assert "location" not in response.headers
    assert (await client.get("/posts/")).json() == (await client.get("/posts")).json()
    me = await client.get("/users/me/", headers={**user_headers, **evil})
    assert me.status_code == 200 and me.json()["username"] == "alice"
    created = await client.post(
        "/posts/", json={"title": "Via slash", "content": "x"}, headers={**user_headers, **evil}
    )
    assert created.status_code == 201
    assert created.headers["location"] == f"/posts/{created.json()['id']}"  # relative
    assert (await client.get("/nowhere/", headers=evil)).status_code == 404


@pytest.mark.parametrize(
    "settings_overrides", [{"allowed_hosts": ["blog.example.com", "*.api.example.com"]}]
)
async def test_allowed_hosts(app: FastAPI) -> None:
    async with client_for(app) as http:
        for host in ("blog.example.com", "BLOG.example.com:8443", "eu.api.example.com"):
            response = await http.get("/posts", headers={"Host": host})
            assert response.status_code == 200, host
        for host in ("evil.example", "blog.example.com.evil.example", "api.example.com", ""):
            response = await http.get("/posts", headers={"Host": host})
            assert response.status_code == 400, host
            assert response.json() == {"detail": "Invalid host header", "error_code": "BAD_REQUEST"}
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert response.headers["X-Request-ID"]
            assert "location" not in response.headers


async def test_any_host_by_default(client: httpx.AsyncClient) -> None:
    assert (await client.get("/posts", headers={"Host": "whatever.example"})).status_code == 200


# --- Cache-Control and Vary ----------------------------------------------------------------------


def assert_caching(response: httpx.Response, cache_control: str) -> None:
    assert response.headers.get("cache-control") == cache_control, (
        str(response.request.url),
        response.status_code,
        response.headers.get("cache-control"),
    )
    assert "authorization" in response.headers.get("vary", "").lower()


async def test_answers_with_a_token_are_private_and_vary_by_it(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    draft = await create_post(client, user_headers, "My draft", published=False)
    public = await create_post(client, user_headers, "My post", published=True)
    for path in (
        f"/posts/{draft['id']}",
        f"/posts/{public['id']}",
        "/posts",
        "/posts?published=false",
        f"/posts/{public['id']}/comments",
    ):
        response = await client.get(path, headers=user_headers)
        assert response.status_code == 200, path
        assert_caching(response, "private")
    me = await client.get("/users/me", headers=user_headers)
    assert_caching(me, "private, no-store")
    created = await create_post_response(client, user_headers)
    assert_caching(created, "private, no-store")
    bad = await client.get("/posts", headers={"Authorization": "Bearer nonsense"})
    assert bad.status_code == 401
    assert_caching(bad, "private, no-store")


async def create_post_response(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> httpx.Response:
    response = await client.post(
        "/posts", json={"title": "Cached?", "content": "x"}, headers=headers
    )
    assert response.status_code == 201
    return response


async def test_public_reads_say_what_a_shared_cache_may_do(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    post = await create_post(client, user_headers, "Public post", published=True)
    for path in (f"/posts/{post['id']}", "/posts", f"/posts/{post['id']}/comments"):
        response = await client.get(path)
        assert response.status_code == 200
        assert_caching(response, "public, no-cache")  # store, but revalidate (ETag) each time
    etag = (await client.get(f"/posts/{post['id']}")).headers["etag"]
    not_modified = await client.get(f"/posts/{post['id']}", headers={"If-None-Match": etag})
    assert not_modified.status_code == 304
    assert_caching(not_modified, "public, no-cache")
    for path in ("/posts/424242", "/nowhere", "/", "/health/ready", "/metrics"):
        assert_caching(await client.get(path), "no-store")
    assert_caching(await client.get("/users/me"), "no-store")  # 401


# --- /metrics ------------------------------------------------------------------------------------

METRICS_TOKEN = "metrics-token-for-tests-0123456789"


@pytest.mark.parametrize("settings_overrides", [{"metrics_token": METRICS_TOKEN}])
async def test_metrics_token_is_the_only_key_to_metrics(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    missing = await client.get("/metrics")
    assert missing.status_code == 401
    assert missing.json()["error_code"] == "NOT_AUTHENTICATED"
    assert missing.headers["www-authenticate"] == "Bearer"
    for headers in (
        user_headers,  # a user's valid token is not the metrics token
        {"Authorization": f"Bearer {METRICS_TOKEN}x"},
        {"Authorization": f"Bearer {METRICS_TOKEN[:-1]}"},
        {"Authorization": f"Basic {METRICS_TOKEN}"},
    ):
        refused = await client.get("/metrics", headers=headers)
        assert refused.status_code == 401, headers
        assert set(refused.json()) == {"detail", "error_code"}
    allowed = await client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert allowed.status_code == 200
    assert "http_requests_total" in allowed.text
    assert allowed.headers["cache-control"] == "private, no-store"


async def test_metrics_without_a_token_configured_stay_open(client: httpx.AsyncClient) -> None:
    assert (await client.get("/metrics")).status_code == 200
    bad = await client.get("/metrics", headers={"Authorization": "Bearer not-a-jwt"})
    assert bad.status_code == 401 and bad.json()["error_code"] == "INVALID_TOKEN"


async def test_scrapes_are_cached_for_a_moment(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scrape merges every worker's files (~25 ms on the reference machine): scraping in a
    loop now costs one render a second per worker."""
    monkeypatch.setattr(observability, "_rendered", (-math.inf, b""))
    renders = []
    real_render = observability._render

    def counting_render() -> bytes:
        renders.append(1)
        return real_render()

    monkeypatch.setattr(observability, "_render", counting_render)
    first = (await client.get("/metrics")).text
    for _ in range(5):
        assert (await client.get("/posts")).status_code == 200
        assert (await client.get("/metrics")).text == first
    assert len(renders) == 1
    monkeypatch.setattr(observability, "SCRAPE_CACHE_SECONDS", 0.0)
    assert (await client.get("/metrics")).text != first
    assert len(renders) == 2
