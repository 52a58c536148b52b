"""Comments on a post: listing (oldest first, offset and cursor paging), creating, deleting,
who may do what, and what happens to them when their post goes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from conftest import create_post, login, register
from core_helpers import assert_error, me, next_link, parse_time
from fastapi import FastAPI
from sqlalchemy import delete, func, select, update

import crud
from models import Comment, Post

COMMENT_FIELDS = {"id", "post_id", "text", "author", "author_id", "created_at"}


# --- helpers -----------------------------------------------------------------------------------


async def add_comment(
    client: httpx.AsyncClient, headers: dict[str, str], post_id: int, text: str
) -> dict[str, Any]:
    response = await client.post(f"/posts/{post_id}/comments", json={"text": text}, headers=headers)
    assert response.status_code == 201, response.text
    comment: dict[str, Any] = response.json()
    return comment


async def list_comments(
    client: httpx.AsyncClient,
    post_id: int,
    headers: dict[str, str] | None = None,
    **params: Any,
) -> list[dict[str, Any]]:
    response = await client.get(f"/posts/{post_id}/comments", params=params, headers=headers)
    assert response.status_code == 200, response.text
    comments: list[dict[str, Any]] = response.json()
    return comments


def link_query(link: str, post_id: int) -> dict[str, str]:
    parts = urlsplit(link)
    assert parts.path == f"/posts/{post_id}/comments", link
    params = parse_qs(parts.query, keep_blank_values=True)
    assert all(len(values) == 1 for values in params.values()), link
    return {key: values[0] for key, values in params.items()}


async def follow_pages(
    client: httpx.AsyncClient, post_id: int, max_pages: int = 50, **params: Any
) -> list[list[dict[str, Any]]]:
    """Every page from the first request on, following the next links to the end."""
    pages = []
    response = await client.get(f"/posts/{post_id}/comments", params=params)
    for _ in range(max_pages):
        assert response.status_code == 200, response.text
        pages.append(response.json())
        link = next_link(response)
        if link is None:
            return pages
        query = link_query(link, post_id)
        assert "cursor" in query and "skip" not in query, link
        assert query.get("limit") == str(params.get("limit", 10)), link
        response = await client.get(link)
    raise AssertionError("the next links never ended")


async def count_comments(app: FastAPI, post_id: int) -> int:
    """Counted in the database, bypassing the API (which 404s for a deleted post)."""
    async with app.state.database.sessionmaker() as session:
        query = select(func.count()).select_from(Comment).where(Comment.post_id == post_id)
        count: int = (await session.execute(query)).scalar_one()
        return count


async def third_user(client: httpx.AsyncClient) -> dict[str, str]:
    await register(client, "carol")
    return await login(client, "carol")


# --- create ------------------------------------------------------------------------------------


async def test_create_returns_the_comment(
    client: httpx.AsyncClient, user_headers: dict[str, str], other_headers: dict[str, str]
) -> None:
    post = await create_post(client, user_headers, "Hello")
    bob = await me(client, other_headers)
    response = await client.post(
        f"/posts/{post['id']}/comments", json={"text": "Nice post!"}, headers=other_headers
    )
    assert response.status_code == 201, response.text
    comment = response.json()
    assert set(comment) == COMMENT_FIELDS
    assert isinstance(comment["id"], int)
    assert comment["post_id"] == post["id"]
    assert comment["text"] == "Nice post!"
    assert comment["author"] == "bob"
    assert comment["author_id"] == bob["id"]
    created = parse_time(comment["created_at"])
    assert abs(datetime.now(UTC) - created) < timedelta(minutes=1)
    assert await list_comments(client, post["id"]) == [comment]


async def test_create_ignores_client_supplied_identity(
    client: httpx.AsyncClient, user_headers: dict[str, str], other_headers: dict[str, str]
) -> None:
    post = await create_post(client, user_headers, "Hello")
    other = await create_post(client, user_headers, "Other")
    alice = await me(client, user_headers)
    response = await client.post(
        f"/posts/{post['id']}/comments",
        json={
            "text": "mine",
            "author": "mallory",
            "author_id": alice["id"],
            "post_id": other["id"],
            "id": 9999,
            "created_at": "2000-01-01T00:00:00Z",
        },
        headers=other_headers,
    )
    assert response.status_code == 201, response.text
    comment = response.json()
    assert comment["author"] == "bob"
    assert comment["author_id"] != alice["id"]
    assert comment["post_id"] == post["id"]
    assert comment["id"] != 9999
    assert parse_time(comment["created_at"]).year > 2000
    assert await list_comments(client, other["id"]) == []


async def test_author_is_shown_as_registered(client: httpx.AsyncClient) -> None:
    await register(client, "Mixed.Case_User")
    headers = await login(client, "mixed.case_user")
    post = await create_post(client, headers, "Hello")
    comment = await add_comment(client, headers, post["id"], "hi")
    assert comment["author"] == "Mixed.Case_User"


async def test_create_anonymous_is_401(
    client: httpx.AsyncClient, user_headers: dict[str, str], app: FastAPI
) -> None:
    post = await create_post(client, user_headers, "Hello")
    response = await client.post(f"/posts/{post['id']}/comments", json={"text": "hi"})
    assert_error(response, 401, "NOT_AUTHENTICATED")
    assert response.headers["www-authenticate"].lower().startswith("bearer")
    assert await count_comments(app, post["id"]) == 0


async def test_create_with_a_bad_token_is_401(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    post = await create_post(client, user_headers, "Hello")
    response = await client.post(
        f"/posts/{post['id']}/comments",
        json={"text": "hi"},
        headers={"Authorization": "Bearer not-a-token"},
    )
    assert_error(response, 401, "INVALID_TOKEN")


@pytest.mark.parametrize(
    "body",
    [
        {"text": ""},
        {"text": " "},
        {"text": " \t\n "},
        {"text": "x" * 501},
        {"text": None},
        {"text": ["a"]},
        {},
        {"content": "wrong field"},
    ],
    ids=["empty", "space", "whitespace", "501-chars", "null", "list", "missing", "other-field"],
)
async def test_create_invalid_text_is_422(
    client: httpx.AsyncClient, user_headers: dict[str, str], app: FastAPI, body: dict[str, Any]
) -> None:
    post = await create_post(client, user_headers, "Hello")
    response = await client.post(f"/posts/{post['id']}/comments", json=body, headers=user_headers)
    assert_error(response, 422, "VALIDATION_ERROR")
    assert await count_comments(app, post["id"]) == 0


async def test_create_non_json_body_is_422(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    post = await create_post(client, user_headers, "Hello")
    response = await client.post(
        f"/posts/{post['id']}/comments",
        content=b"not json",
        headers={**user_headers, "Content-Type": "application/json"},
    )
    assert_error(response, 422, "VALIDATION_ERROR")


@pytest.mark.parametrize("text", ["a", "x" * 500, "é" * 500, "  padded  ", "line\nbreak"])
async def test_create_text_within_bounds(
    client: httpx.AsyncClient, user_headers: dict[str, str], text: str
) -> None:
    post = await create_post(client, user_headers, "Hello")
    comment = await add_comment(client, user_headers, post["id"], text)
    assert comment["text"].strip() == text.strip()
    [listed] = await list_comments(client, post["id"])
    assert listed == comment


async def test_create_on_a_missing_post_is_404(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    response = await client.post(
        "/posts/999999/comments", json={"text": "hi"}, headers=user_headers
    )
    assert_error(response, 404, "POST_NOT_FOUND")


@pytest.mark.parametrize("idempotency_key", [None, "comment-on-a-vanishing-post"])
async def test_create_on_a_post_deleted_meanwhile_is_404(
    client: httpx.AsyncClient,
    app: FastAPI,
    user_headers: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    idempotency_key: str | None,
) -> None:
    """The post is deleted between the comment's visibility check and its insert (a race the
    soak found): 404 as for any missing post, not a foreign-key 500."""
    post = await create_post(client, user_headers, "Here, then gone")
    read_post = crud.get_visible_post

    async def read_then_lose_it(session: Any, post_id: int, viewer: Any) -> Any:
        found = await read_post(session, post_id, viewer)
        async with app.state.database.sessionmaker() as other:
            await other.execute(delete(Post).where(Post.id == post_id))
            await other.commit()
        return found

    monkeypatch.setattr(crud, "get_visible_post", read_then_lose_it)
    headers = {**user_headers, **({"Idempotency-Key": idempotency_key} if idempotency_key else {})}
    response = await client.post(
        f"/posts/{post['id']}/comments", json={"text": "hi"}, headers=headers
    )
    assert_error(response, 404, "POST_NOT_FOUND")
    async with app.state.database.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(Comment)) == 0


# --- list --------------------------------------------------------------------------------------


async def test_list_is_oldest_first_and_public(
    client: httpx.AsyncClient, user_headers: dict[str, str], other_headers: dict[str, str]
) -> None:
    post = await create_post(client, user_headers, "Hello")
    made = [
        await add_comment(client, user_headers, post["id"], "first"),
        await add_comment(client, other_headers, post["id"], "second"),
        await add_comment(client, user_headers, post["id"], "third"),
    ]
    anonymous = await list_comments(client, post["id"])
    assert anonymous == made
    assert [c["text"] for c in anonymous] == ["first", "second", "third"]
    times = [parse_time(c["created_at"]) for c in anonymous]
    assert times == sorted(times)
    assert await list_comments(client, post["id"], headers=other_headers) == made


async def test_list_only_the_posts_own_comments(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    first = await create_post(client, user_headers, "First")
    second = await create_post(client, user_headers, "Second")
    a = await add_comment(client, user_headers, first["id"], "on first")
    b = await add_comment(client, user_headers, second["id"], "on second")
    assert await list_comments(client, first["id"]) == [a]
    assert await list_comments(client, second["id"]) == [b]


async def test_list_empty(client: httpx.AsyncClient, user_headers: dict[str, str]) -> None:
    post = await create_post(client, user_headers, "Hello")
    response = await client.get(f"/posts/{post['id']}/comments")
    assert response.status_code == 200
    assert response.json() == []
    assert "link" not in response.headers


async def test_list_default_limit_is_10(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    post = await create_post(client, user_headers, "Hello")
    made = [await add_comment(client, user_headers, post["id"], f"c{i}") for i in range(11)]
    response = await client.get(f"/posts/{post['id']}/comments")
    assert response.json() == made[:10]
    assert next_link(response) is not None


async def test_list_skip_and_limit(client: httpx.AsyncClient, user_headers: dict[str, str]) -> None:
    post = await create_post(client, user_headers, "Hello")
    made = [await add_comment(client, user_headers, post["id"], f"c{i}") for i in range(5)]
    assert await list_comments(client, post["id"], limit=2) == made[:2]
    assert await list_comments(client, post["id"], skip=1, limit=3) == made[1:4]
    assert await list_comments(client, post["id"], skip=4) == made[4:]
    assert await list_comments(client, post["id"], skip=5) == []
    assert await list_comments(client, post["id"], skip=0, limit=1) == made[:1]


@pytest.mark.parametrize("limit", [1, 100])
async def test_list_limit_bounds_accepted(
    client: httpx.AsyncClient, user_headers: dict[str, str], limit: int
) -> None:
    post = await create_post(client, user_headers, "Hello")
    made = [await add_comment(client, user_headers, post["id"], f"c{i}") for i in range(2)]
    assert await list_comments(client, post["id"], limit=limit) == made[:limit]


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 101}, {"limit": -1}, {"limit": "ten"}, {"skip": -1}, {"skip": "x"}],
    ids=["limit-0", "limit-101", "limit-neg", "limit-text", "skip-neg", "skip-text"],
)
async def test_list_bad_paging_is_422(
    client: httpx.AsyncClient, user_headers: dict[str, str], params: dict[str, Any]
) -> None:
    post = await create_post(client, user_headers, "Hello")
    response = await client.get(f"/posts/{post['id']}/comments", params=params)
    assert_error(response, 422, "VALIDATION_ERROR")


async def test_list_skip_with_cursor_is_422(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    post = await create_post(client, user_headers, "Hello")
    for i in range(3):
        await add_comment(client, user_headers, post["id"], f"c{i}")
    first = await client.get(f"/posts/{post['id']}/comments", params={"limit": 1})
    link = next_link(first)
    assert link is not None
    cursor = link_query(link, post["id"])["cursor"]
    response = await client.get(
        f"/posts/{post['id']}/comments", params={"cursor": cursor, "skip": 0}
    )
    assert_error(response, 422, "VALIDATION_ERROR")
    response = await client.get(
        f"/posts/{post['id']}/comments", params={"cursor": cursor, "skip": 1}
    )
    assert_error(response, 422, "VALIDATION_ERROR")


@pytest.mark.parametrize(
    "cursor",
    ["garbage", "!!!", "eyJhIjoxfQ", "W10", "WyJjb21tZW50cyIsIm5vdC1hLWRhdGUiLDFd", "x" * 300],
    ids=["word", "symbols", "json-object", "empty-list", "bad-date", "long"],
)
async def test_list_garbage_cursor_is_422_invalid_cursor(
    client: httpx.AsyncClient, user_headers: dict[str, str], cursor: str
) -> None:
    post = await create_post(client, user_headers, "Hello")
    await add_comment(client, user_headers, post["id"], "c")
    response = await client.get(f"/posts/{post['id']}/comments", params={"cursor": cursor})
    assert_error(response, 422, "INVALID_CURSOR")


async def test_list_a_posts_list_cursor_is_invalid_here(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    post = await create_post(client, user_headers, "Hello")
    await create_post(client, user_headers, "Another")
    await add_comment(client, user_headers, post["id"], "c")
    posts_page = await client.get("/posts", params={"limit": 1})
    link = next_link(posts_page)
    assert link is not None
    cursor = parse_qs(urlsplit(link).query)["cursor"][0]
    response = await client.get(f"/posts/{post['id']}/comments", params={"cursor": cursor})
    assert_error(response, 422, "INVALID_CURSOR")


async def test_link_only_when_there_is_a_next_page(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    post = await create_post(client, user_headers, "Hello")
    for i in range(3):
        await add_comment(client, user_headers, post["id"], f"c{i}")
    url = f"/posts/{post['id']}/comments"
    assert next_link(await client.get(url, params={"limit": 3})) is None
    assert next_link(await client.get(url, params={"limit": 4})) is None
    assert next_link(await client.get(url, params={"limit": 2, "skip": 1})) is None
    link = next_link(await client.get(url, params={"limit": 2}))
    assert link is not None
    query = link_query(link, post["id"])
    assert query["limit"] == "2"
    assert set(query) == {"limit", "cursor"}
    last = await client.get(link)
    assert [c["text"] for c in last.json()] == ["c2"]
    assert next_link(last) is None


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 8])
async def test_following_links_pages_through_everything(
    client: httpx.AsyncClient,
    user_headers: dict[str, str],
    other_headers: dict[str, str],
    limit: int,
) -> None:
    post = await create_post(client, user_headers, "Hello")
    made = [
        await add_comment(client, user_headers if i % 2 else other_headers, post["id"], f"c{i}")
        for i in range(7)
    ]
    pages = await follow_pages(client, post["id"], limit=limit)
    assert all(0 < len(page) <= limit for page in pages)
    assert len(pages) == -(-7 // limit)
    assert [c for page in pages for c in page] == made


async def test_next_link_after_an_offset_page_uses_a_cursor(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    post = await create_post(client, user_headers, "Hello")
    made = [await add_comment(client, user_headers, post["id"], f"c{i}") for i in range(6)]
    pages = await follow_pages(client, post["id"], skip=2, limit=2)
    assert [c for page in pages for c in page] == made[2:]
    assert len(pages) == 2


async def test_paging_with_equal_timestamps_breaks_ties_by_id(
    client: httpx.AsyncClient, user_headers: dict[str, str], app: FastAPI
) -> None:
    post = await create_post(client, user_headers, "Hello")
    made = [await add_comment(client, user_headers, post["id"], f"c{i}") for i in range(5)]
    same = datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)
    async with app.state.database.sessionmaker() as session:
        await session.execute(
            update(Comment).where(Comment.post_id == post["id"]).values(created_at=same)
        )
        await session.commit()
    pages = await follow_pages(client, post["id"], limit=2)
    listed = [c for page in pages for c in page]
    assert [c["id"] for c in listed] == [c["id"] for c in made]
    assert all(parse_time(c["created_at"]) == same for c in listed)


async def test_paging_sees_comments_added_after_the_cursor(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    post = await create_post(client, user_headers, "Hello")
    made = [await add_comment(client, user_headers, post["id"], f"c{i}") for i in range(3)]
    first = await client.get(f"/posts/{post['id']}/comments", params={"limit": 2})
    assert first.json() == made[:2]
    link = next_link(first)
    assert link is not None
    made.append(await add_comment(client, user_headers, post["id"], "late"))
    second = await client.get(link)
    assert second.json() == made[2:]
    assert next_link(second) is None


# --- drafts and missing posts ------------------------------------------------------------------


async def test_someone_elses_draft_is_404_for_list_create_and_delete(
    client: httpx.AsyncClient,
    user_headers: dict[str, str],
    other_headers: dict[str, str],
    app: FastAPI,
) -> None:
    draft = await create_post(client, user_headers, "Draft", published=False)
    mine = await add_comment(client, user_headers, draft["id"], "owner's note")
    url = f"/posts/{draft['id']}/comments"

    assert_error(await client.get(url), 404, "POST_NOT_FOUND")
    assert_error(await client.get(url, headers=other_headers), 404, "POST_NOT_FOUND")
    response = await client.post(url, json={"text": "hi"}, headers=other_headers)
    assert_error(response, 404, "POST_NOT_FOUND")
    response = await client.delete(f"{url}/{mine['id']}", headers=other_headers)
    assert_error(response, 404, "POST_NOT_FOUND")
    response = await client.delete(f"{url}/999999", headers=other_headers)
    assert_error(response, 404, "POST_NOT_FOUND")
    assert await count_comments(app, draft["id"]) == 1


async def test_draft_owner_and_admin_may_comment_and_list(
    client: httpx.AsyncClient, user_headers: dict[str, str], admin_headers: dict[str, str]
) -> None:
    draft = await create_post(client, user_headers, "Draft", published=False)
    own = await add_comment(client, user_headers, draft["id"], "note to self")
    admin = await add_comment(client, admin_headers, draft["id"], "admin note")
    assert admin["author"] == "root_admin"
    expected = [own, admin]
    assert await list_comments(client, draft["id"], headers=user_headers) == expected
    assert await list_comments(client, draft["id"], headers=admin_headers) == expected


async def test_draft_owner_and_admin_may_delete_comments(
    client: httpx.AsyncClient, user_headers: dict[str, str], admin_headers: dict[str, str]
) -> None:
    draft = await create_post(client, user_headers, "Draft", published=False)
    first = await add_comment(client, user_headers, draft["id"], "one")
    second = await add_comment(client, user_headers, draft["id"], "two")
    url = f"/posts/{draft['id']}/comments"
    assert (await client.delete(f"{url}/{first['id']}", headers=user_headers)).status_code == 204
    assert (await client.delete(f"{url}/{second['id']}", headers=admin_headers)).status_code == 204
    assert await list_comments(client, draft["id"], headers=user_headers) == []


async def test_unpublishing_hides_the_comments(
    client: httpx.AsyncClient, user_headers: dict[str, str], other_headers: dict[str, str]
) -> None:
    post = await create_post(client, user_headers, "Hello")
    comment = await add_comment(client, other_headers, post["id"], "hi")
    response = await client.patch(
        f"/posts/{post['id']}", json={"published": False}, headers=user_headers
    )
    assert response.status_code == 200, response.text
    url = f"/posts/{post['id']}/comments"
    assert_error(await client.get(url, headers=other_headers), 404, "POST_NOT_FOUND")
    response = await client.delete(f"{url}/{comment['id']}", headers=other_headers)
    assert_error(response, 404, "POST_NOT_FOUND")
    assert await list_comments(client, post["id"], headers=user_headers) == [comment]


async def test_missing_post_is_404_for_list_create_and_delete(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    url = "/posts/999999/comments"
    assert_error(await client.get(url), 404, "POST_NOT_FOUND")
    assert_error(await client.get(url, headers=user_headers), 404, "POST_NOT_FOUND")
    response = await client.post(url, json={"text": "hi"}, headers=user_headers)
    assert_error(response, 404, "POST_NOT_FOUND")
    assert_error(await client.delete(f"{url}/1", headers=user_headers), 404, "POST_NOT_FOUND")


# --- delete ------------------------------------------------------------------------------------


async def test_delete_by_the_comment_author(
    client: httpx.AsyncClient,
    user_headers: dict[str, str],
    other_headers: dict[str, str],
    app: FastAPI,
) -> None:
    post = await create_post(client, user_headers, "Hello")
    keep = await add_comment(client, user_headers, post["id"], "keep")
    gone = await add_comment(client, other_headers, post["id"], "gone")
    response = await client.delete(
        f"/posts/{post['id']}/comments/{gone['id']}", headers=other_headers
    )
    assert response.status_code == 204, response.text
    assert response.content == b""
    assert await list_comments(client, post["id"]) == [keep]
    assert await count_comments(app, post["id"]) == 1


async def test_delete_by_the_post_owner(
    client: httpx.AsyncClient, user_headers: dict[str, str], other_headers: dict[str, str]
) -> None:
    post = await create_post(client, user_headers, "Hello")
    comment = await add_comment(client, other_headers, post["id"], "by bob")
    response = await client.delete(
        f"/posts/{post['id']}/comments/{comment['id']}", headers=user_headers
    )
    assert response.status_code == 204, response.text
    assert response.content == b""
    assert await list_comments(client, post["id"]) == []


async def test_delete_by_an_admin(
    client: httpx.AsyncClient,
    user_headers: dict[str, str],
    other_headers: dict[str, str],
    admin_headers: dict[str, str],
) -> None:
    post = await create_post(client, user_headers, "Hello")
    comment = await add_comment(client, other_headers, post["id"], "by bob")
    response = await client.delete(
        f"/posts/{post['id']}/comments/{comment['id']}", headers=admin_headers
    )
    assert response.status_code == 204, response.text
    assert response.content == b""
    assert await list_comments(client, post["id"]) == []


async def test_delete_by_anyone_else_is_403_and_keeps_the_comment(
    client: httpx.AsyncClient,
    user_headers: dict[str, str],
    other_headers: dict[str, str],
    app: FastAPI,
) -> None:
    carol_headers = await third_user(client)
    post = await create_post(client, user_headers, "Hello")
    by_bob = await add_comment(client, other_headers, post["id"], "by bob")
    by_alice = await add_comment(client, user_headers, post["id"], "by alice")
    url = f"/posts/{post['id']}/comments"
    response = await client.delete(f"{url}/{by_bob['id']}", headers=carol_headers)
    assert_error(response, 403, "INSUFFICIENT_PERMISSIONS")
    # a commenter may not delete the post owner's comments either
    response = await client.delete(f"{url}/{by_alice['id']}", headers=other_headers)
    assert_error(response, 403, "INSUFFICIENT_PERMISSIONS")
    assert await list_comments(client, post["id"]) == [by_bob, by_alice]
    assert await count_comments(app, post["id"]) == 2


async def test_delete_anonymous_is_401(
    client: httpx.AsyncClient, user_headers: dict[str, str], app: FastAPI
) -> None:
    post = await create_post(client, user_headers, "Hello")
    comment = await add_comment(client, user_headers, post["id"], "hi")
    response = await client.delete(f"/posts/{post['id']}/comments/{comment['id']}")
    assert_error(response, 401, "NOT_AUTHENTICATED")
    assert await count_comments(app, post["id"]) == 1


async def test_delete_unknown_comment_is_404(
    client: httpx.AsyncClient, user_headers: dict[str, str], admin_headers: dict[str, str]
) -> None:
    post = await create_post(client, user_headers, "Hello")
    for headers in (user_headers, admin_headers):
        response = await client.delete(f"/posts/{post['id']}/comments/999999", headers=headers)
        assert_error(response, 404, "COMMENT_NOT_FOUND")


async def test_delete_twice_is_404_the_second_time(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    post = await create_post(client, user_headers, "Hello")
    comment = await add_comment(client, user_headers, post["id"], "hi")
    url = f"/posts/{post['id']}/comments/{comment['id']}"
    assert (await client.delete(url, headers=user_headers)).status_code == 204
    assert_error(await client.delete(url, headers=user_headers), 404, "COMMENT_NOT_FOUND")


async def test_delete_a_comment_through_another_post_is_404(
    client: httpx.AsyncClient,
    user_headers: dict[str, str],
    admin_headers: dict[str, str],
    app: FastAPI,
) -> None:
    first = await create_post(client, user_headers, "First")
    second = await create_post(client, user_headers, "Second")
    comment = await add_comment(client, user_headers, first["id"], "on first")
    for headers in (user_headers, admin_headers):
        response = await client.delete(
            f"/posts/{second['id']}/comments/{comment['id']}", headers=headers
        )
        assert_error(response, 404, "COMMENT_NOT_FOUND")
    assert await list_comments(client, first["id"]) == [comment]
    assert await count_comments(app, first["id"]) == 1


# --- the post goes, its comments go ------------------------------------------------------------


@pytest.mark.parametrize("deleter", ["owner", "admin"])
async def test_deleting_a_post_deletes_its_comments(
    client: httpx.AsyncClient,
    user_headers: dict[str, str],
    other_headers: dict[str, str],
    admin_headers: dict[str, str],
    app: FastAPI,
    deleter: str,
) -> None:
    post = await create_post(client, user_headers, "Doomed")
    survivor = await create_post(client, user_headers, "Survivor")
    for i in range(3):
        await add_comment(client, other_headers, post["id"], f"c{i}")
    kept = await add_comment(client, other_headers, survivor["id"], "stays")
    assert await count_comments(app, post["id"]) == 3

    headers = user_headers if deleter == "owner" else admin_headers
    response = await client.delete(f"/posts/{post['id']}", headers=headers)
    assert response.status_code == 204, response.text

    assert await count_comments(app, post["id"]) == 0
    assert_error(await client.get(f"/posts/{post['id']}/comments"), 404, "POST_NOT_FOUND")
    assert await list_comments(client, survivor["id"]) == [kept]
    assert await count_comments(app, survivor["id"]) == 1
