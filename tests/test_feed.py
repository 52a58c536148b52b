"""GET /feed.atom: parsed with feedparser (no bozo error) and read element by element."""

from __future__ import annotations

from typing import Any

import feedparser
import httpx
import pytest
from conftest import create_post
from core_helpers import assert_error, parse_time
from fastapi import FastAPI
from test_rendering import assert_safe

ATOM = "application/atom+xml; charset=utf-8"


def parse_feed(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == ATOM
    feed = feedparser.parse(response.content)
    assert not feed.bozo, feed.get("bozo_exception")
    assert feed.version == "atom10"
    return feed


async def test_feed_elements(client: httpx.AsyncClient, user_headers: dict[str, str]) -> None:
    first = await create_post(
        client, user_headers, "First & <best>", content="Hello **world**", tags=["b", "a"]
    )
    second = await create_post(client, user_headers, "Second", content="x " * 300)
    await create_post(client, user_headers, "Draft", published=False)
    feed = parse_feed(await client.get("/feed.atom"))
    assert feed.feed.id == "http://test/feed.atom"
    assert feed.feed.title
    (self_link,) = [link for link in feed.feed.links if link.rel == "self"]
    assert self_link.href == "http://test/feed.atom"
    assert [entry.title for entry in feed.entries] == ["Second", "First & <best>"]
    entry = feed.entries[1]
    assert entry.id == f"http://test/posts/{first['id']}"
    assert entry.link == f"http://test/posts/{first['id']}"
    assert parse_time(entry.published) == parse_time(first["created_at"])
    assert parse_time(entry.updated) == parse_time(first["updated_at"])
    assert entry.author_detail.name == "alice"
    assert entry.summary == first["excerpt"] == "Hello world"
    (content,) = entry.content
    assert content.type == "text/html"
    assert content.value == first["content_html"].strip()  # feedparser trims the end
    assert_safe(content.value)
    assert [tag.term for tag in entry.tags] == ["a", "b"]
    assert feed.entries[0].summary == second["excerpt"]
    assert parse_time(feed.feed.updated) == parse_time(second["updated_at"])


async def test_feed_entry_id_is_stable_across_edits(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    post = await create_post(client, user_headers, "Stable")
    before = parse_feed(await client.get("/feed.atom")).entries[0]
    await client.patch(
        f"/posts/{post['id']}", json={"title": "Renamed", "slug": "renamed"}, headers=user_headers
    )
    after = parse_feed(await client.get("/feed.atom")).entries[0]
    assert after.id == before.id
    assert after.title == "Renamed"
    assert parse_time(after.updated) > parse_time(before.updated)


async def test_feed_holds_the_20_newest(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    for n in range(22):
        await create_post(client, user_headers, f"Post {n}")
    feed = parse_feed(await client.get("/feed.atom"))
    assert [entry.title for entry in feed.entries] == [f"Post {n}" for n in range(21, 1, -1)]


async def test_feed_by_tag(client: httpx.AsyncClient, user_headers: dict[str, str]) -> None:
    await create_post(client, user_headers, "Py", tags=["python"])
    await create_post(client, user_headers, "Both", tags=["python", "async"])
    await create_post(client, user_headers, "Neither")
    feed = parse_feed(await client.get("/feed.atom", params={"tag": "Python"}))
    assert [entry.title for entry in feed.entries] == ["Both", "Py"]
    assert feed.feed.id == "http://test/feed.atom?tag=python"
    feed = parse_feed(await client.get("/feed.atom", params={"tag": ["python", "async"]}))
    assert [entry.title for entry in feed.entries] == ["Both"]
    empty = parse_feed(await client.get("/feed.atom", params={"tag": "nothing"}))
    assert empty.entries == []
    assert_error(await client.get("/feed.atom", params={"tag": "a b"}), 422, "VALIDATION_ERROR")


async def test_feed_etag_and_304(client: httpx.AsyncClient, user_headers: dict[str, str]) -> None:
    post = await create_post(client, user_headers, "Cached")
    response = await client.get("/feed.atom")
    etag = response.headers["etag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    assert (await client.get("/feed.atom")).headers["etag"] == etag
    again = await client.get("/feed.atom", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == etag
    other = await client.get("/feed.atom", headers={"If-None-Match": '"other"'})
    assert other.status_code == 200
    await client.patch(f"/posts/{post['id']}", json={"tags": ["new"]}, headers=user_headers)
    changed = await client.get("/feed.atom", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    tagged = await client.get("/feed.atom", params={"tag": "new"})
    assert tagged.headers["etag"] != changed.headers["etag"]


@pytest.mark.parametrize("settings_overrides", [{"public_base_url": "https://blog.example.com/"}])
async def test_feed_links_use_public_base_url(
    client: httpx.AsyncClient, user_headers: dict[str, str], app: FastAPI
) -> None:
    post = await create_post(client, user_headers, "Public")
    response = await client.get("/feed.atom", headers={"Host": "evil.example"})
    feed = parse_feed(response)
    assert feed.feed.id == "https://blog.example.com/feed.atom"
    assert feed.entries[0].link == f"https://blog.example.com/posts/{post['id']}"
    assert b"evil.example" not in response.content


async def test_feed_carries_text_xml_cannot_hold(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    """Control characters are valid in titles and content but not in XML 1.0: shown as U+FFFD."""
    await create_post(
        client, user_headers, "Bell\x07 and\x1f unit", content="esc\x1b text \U0001f600"
    )
    feed = parse_feed(await client.get("/feed.atom"))
    (entry,) = feed.entries
    assert entry.title == "Bell\ufffd and\ufffd unit"
    assert "\ufffd" in entry.summary and "\U0001f600" in entry.summary
