"""Small helpers shared by the core-service tests (auth, posts, listing, errors, concurrency)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from fastapi import FastAPI
from sqlalchemy import update

from models import Post

LINK_NEXT = re.compile(r'^<([^>]+)>;\s*rel="next"$')
POST_FIELDS = {
    "id",
    "title",
    "slug",
    "content",
    "content_html",
    "excerpt",
    "reading_time_minutes",
    "tags",
    "author",
    "author_id",
    "published",
    "created_at",
    "updated_at",
}
SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def parse_time(value: str) -> datetime:
    """An API timestamp; asserts it carries a UTC offset, as the contract demands."""
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, value
    return parsed


def next_link(response: httpx.Response) -> str | None:
    """The target of the `Link: <...>; rel="next"` header, or None."""
    header = response.headers.get("link")
    if header is None:
        return None
    match = LINK_NEXT.match(header.strip())
    assert match, header
    return match.group(1)


def link_params(link: str) -> dict[str, str]:
    """The query parameters of a next link (each given once)."""
    parts = urlsplit(link)
    assert parts.path == "/posts", link
    params = parse_qs(parts.query, keep_blank_values=True)
    assert all(len(values) == 1 for values in params.values()), link
    return {key: values[0] for key, values in params.items()}


async def follow_pages(
    client: httpx.AsyncClient,
    first_url: str,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    max_pages: int = 100,
) -> list[list[dict[str, Any]]]:
    """Every page from `first_url` on, following the next links."""
    pages = []
    response = await client.get(first_url, params=params, headers=headers)
    for _ in range(max_pages):
        assert response.status_code == 200, response.text
        pages.append(response.json())
        link = next_link(response)
        if link is None:
            return pages
        response = await client.get(link, headers=headers)
    raise AssertionError("the next links never ended")


async def set_post_times(
    app: FastAPI,
    post_id: int,
    *,
    created_at: datetime | None = None,
    updated_at: datetime | None = None,
) -> None:
    """Backdate a post directly in the database (to make ties and date ranges)."""
    values: dict[str, Any] = {}
    if created_at is not None:
        values["created_at"] = created_at
    if updated_at is not None:
        values["updated_at"] = updated_at
    async with app.state.database.sessionmaker() as session:
        await session.execute(update(Post).where(Post.id == post_id).values(**values))
        await session.commit()


async def me(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    response = await client.get("/users/me", headers=headers)
    assert response.status_code == 200, response.text
    user: dict[str, Any] = response.json()
    return user


def assert_error(response: httpx.Response, status: int, error_code: str) -> dict[str, Any]:
    """The response is an error envelope with this status and code (string detail unless 422)."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error_code"] == error_code, body
    if error_code == "VALIDATION_ERROR":
        assert isinstance(body["detail"], list) and body["detail"], body
    else:
        assert isinstance(body["detail"], str) and body["detail"], body
    return body
