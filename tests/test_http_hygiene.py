"""Host headers, caching headers, `/metrics` access and cost, docs assets (issue 13)."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

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
            assert "location" not in response.headers


async def test_any_host_by_default(client: httpx.AsyncClient) -> None:
    assert (await client.get("/posts", headers={"Host": "whatever.example"})).status_code == 200
