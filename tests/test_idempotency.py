"""`Idempotency-Key` on `POST /posts` and `POST /posts/{id}/comments`: one write per key, the
first final answer replayed, scoped to caller and endpoint, for 24 hours."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import timedelta
from typing import Any

import httpx
import pytest
from conftest import create_post
from core_helpers import assert_error
from fastapi import FastAPI
from sqlalchemy import func, select, update

import idempotency
from models import IdempotencyRecord, utcnow


async def send(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    key: str,
    body: Any,
    url: str = "/posts",
) -> httpx.Response:
    return await client.post(url, json=body, headers={**headers, "Idempotency-Key": key})


async def count_posts(client: httpx.AsyncClient) -> int:
    response = await client.get("/posts", params={"count": "true", "limit": 1})
    assert response.status_code == 200
    return int(response.headers["x-total-count"])


async def comments_of(client: httpx.AsyncClient, post_id: int) -> list[dict[str, Any]]:
    response = await client.get(f"/posts/{post_id}/comments", params={"limit": 100})
    assert response.status_code == 200
    comments: list[dict[str, Any]] = response.json()
    return comments


def assert_replay(replay: httpx.Response, original: httpx.Response) -> None:
    """The retry got the first answer back, marked as a replay."""
    assert replay.status_code == original.status_code, replay.text
    if original.status_code < 300:
        assert replay.content == original.content  # the very bytes first sent
    else:  # a recorded error envelope: the same JSON (spacing may differ)
        assert replay.json() == original.json()
    assert replay.headers.get("location") == original.headers.get("location")
    assert replay.headers["content-type"] == "application/json"
    assert replay.headers["idempotent-replayed"] == "true"


def assert_fresh(response: httpx.Response, status: int = 201) -> None:
    assert response.status_code == status, response.text
    assert "idempotent-replayed" not in response.headers


async def age_records(app: FastAPI, hours: float) -> None:
    async with app.state.database.sessionmaker() as session:
        await session.execute(
            update(IdempotencyRecord).values(created_at=utcnow() - timedelta(hours=hours))
        )
        await session.commit()


async def record_count(app: FastAPI) -> int:
    async with app.state.database.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(IdempotencyRecord)))


# --- replay ------------------------------------------------------------------------------------


async def test_retry_replays_the_first_answer(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    body = {"title": "Exactly once", "content": "Hello"}
    first = await send(client, user_headers, "key-1", body)
    assert_fresh(first)
    post = first.json()
    assert first.headers["location"] == f"/posts/{post['id']}"
    for _ in range(2):
        assert_replay(await send(client, user_headers, "key-1", body), first)
    # The same JSON spelled differently is the same body.
    respelled = json.dumps({"content": "Hello", "title": "Exactly once"}, indent=2)
    replay = await client.post(
        "/posts",
        content=respelled,
        headers={**user_headers, "Idempotency-Key": "key-1", "Content-Type": "application/json"},
    )
    assert_replay(replay, first)
    assert await count_posts(client) == 1
    assert (await client.get(first.headers["location"])).json() == post
    # Requests without a key are untouched by all this.
    await create_post(client, user_headers, "Without a key")
    assert await count_posts(client) == 2


async def test_same_key_with_another_body_is_refused(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    body = {"title": "Keyed", "content": "one"}
    first = await send(client, user_headers, "key-2", body)
    assert_fresh(first)
    for other in (
        {"title": "Keyed", "content": "two"},
        {"title": "Something else entirely", "content": "one"},
        {"title": "Keyed", "content": "one", "published": False},
    ):
        response = await send(client, user_headers, "key-2", other)
        assert_error(response, 422, "IDEMPOTENCY_KEY_REUSED")
        assert "idempotent-replayed" not in response.headers
    assert await count_posts(client) == 1
    assert_replay(await send(client, user_headers, "key-2", body), first)


async def test_key_is_scoped_to_the_caller(
    client: httpx.AsyncClient, user_headers: dict[str, str], other_headers: dict[str, str]
) -> None:
    alice = await send(client, user_headers, "shared-key", {"title": "Alice's", "content": "a"})
    assert_fresh(alice)
    bob = await send(client, other_headers, "shared-key", {"title": "Bob's", "content": "b"})
    assert_fresh(bob)
    assert bob.json()["author"] == "bob"
    assert bob.json()["id"] != alice.json()["id"]
    assert await count_posts(client) == 2
    assert_replay(
        await send(client, user_headers, "shared-key", {"title": "Alice's", "content": "a"}), alice
    )
    assert_replay(
        await send(client, other_headers, "shared-key", {"title": "Bob's", "content": "b"}), bob
    )


async def test_key_is_scoped_to_the_endpoint(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    post = await send(client, user_headers, "multi", {"title": "Commented", "content": "c"})
    assert_fresh(post)
    pid = post.json()["id"]
    comment = await send(
        client, user_headers, "multi", {"text": "first!"}, f"/posts/{pid}/comments"
    )
    assert_fresh(comment)
    assert comment.json()["post_id"] == pid
    assert comment.json()["text"] == "first!"
    assert_replay(
        await send(client, user_headers, "multi", {"text": "first!"}, f"/posts/{pid}/comments"),
        comment,
    )
    assert [c["id"] for c in await comments_of(client, pid)] == [comment.json()["id"]]
    # The same key and body on another post's comments is another request.
    other = await create_post(client, user_headers, "Also commented")
    elsewhere = await send(
        client, user_headers, "multi", {"text": "first!"}, f"/posts/{other['id']}/comments"
    )
    assert_fresh(elsewhere)
    assert elsewhere.json()["post_id"] == other["id"]
    assert len(await comments_of(client, other["id"])) == 1
    assert_replay(
        await send(client, user_headers, "multi", {"title": "Commented", "content": "c"}), post
    )
    assert await count_posts(client) == 2


async def test_key_is_scoped_by_route_and_parsed_id_not_raw_path(
    client: httpx.AsyncClient, user_headers: dict[str, str], app: FastAPI
) -> None:
    """Pins idempotency.scope_for keying by the route and its parsed parameters: a path whose id
    has 300 leading zeros overflowed the 255-char scope column (500 on PostgreSQL), and
    `/posts/03/comments` did not replay `/posts/3/comments` (a second comment)."""
    post = await create_post(client, user_headers, "Zeros")
    pid = post["id"]
    body = {"text": "once"}
    first = await send(client, user_headers, "zeros", body, f"/posts/{'0' * 300}{pid}/comments")
    assert_fresh(first)
    assert first.json()["post_id"] == pid
    for path in (f"/posts/0{pid}/comments", f"/posts/{pid}/comments", f"/posts/+{pid}/comments"):
        assert_replay(await send(client, user_headers, "zeros", body, path), first)
    assert len(await comments_of(client, pid)) == 1
    async with app.state.database.sessionmaker() as session:
        endpoints = (await session.execute(select(IdempotencyRecord.endpoint))).scalars().all()
    assert endpoints == [f"POST /posts/{pid}/comments"]


async def test_validation_failures_are_not_kept(
    client: httpx.AsyncClient, app: FastAPI, user_headers: dict[str, str]
) -> None:
    invalid = {"title": "   ", "content": "fine"}
    for _ in range(2):
        response = await send(client, user_headers, "key-422", invalid)
        assert_error(response, 422, "VALIDATION_ERROR")
        assert "idempotent-replayed" not in response.headers
    broken = await client.post(
        "/posts",
        content=b'{"title": ',
        headers={**user_headers, "Idempotency-Key": "key-422", "Content-Type": "application/json"},
    )
    assert_error(broken, 422, "VALIDATION_ERROR")
    assert await record_count(app) == 0
    fixed = {"title": "Fixed title", "content": "fine"}
    response = await send(client, user_headers, "key-422", fixed)
    assert_fresh(response)
    assert response.json()["title"] == "Fixed title"
    assert_replay(await send(client, user_headers, "key-422", fixed), response)
    assert await count_posts(client) == 1


async def test_a_conflict_is_kept_and_replayed(
    client: httpx.AsyncClient, user_headers: dict[str, str], other_headers: dict[str, str]
) -> None:
    taken = await create_post(client, user_headers, "Taken")
    body = {"title": "taken", "content": "mine now?"}
    conflict = await send(client, other_headers, "key-409", body)
    assert_error(conflict, 409, "POST_TITLE_EXISTS")
    assert "idempotent-replayed" not in conflict.headers
    deleted = await client.delete(f"/posts/{taken['id']}", headers=user_headers)
    assert deleted.status_code == 204
    # The title is free now, yet the retry is the same request: it gets the same answer.
    replay = await send(client, other_headers, "key-409", body)
    assert_replay(replay, conflict)
    assert await count_posts(client) == 0
    # A new key is a new request.
    assert_fresh(await send(client, other_headers, "key-409-b", body))
    assert await count_posts(client) == 1


async def test_odd_but_valid_keys_work_and_overlong_ones_are_refused(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    for n, key in enumerate([b"caf\xe9-\xb2 key", b"k" * 255, b"{\"json\": 'ish'}"]):
        body = {"title": f"Odd key {n}", "content": "x"}
        headers: dict[str, Any] = {**user_headers, "Idempotency-Key": key}
        first = await client.post("/posts", json=body, headers=headers)
        assert_fresh(first)
        assert_replay(await client.post("/posts", json=body, headers=headers), first)
    assert await count_posts(client) == 3
    too_long = await send(client, user_headers, "k" * 256, {"title": "Too long", "content": "x"})
    assert_error(too_long, 422, "VALIDATION_ERROR")
    assert await count_posts(client) == 3


# --- concurrent duplicates ---------------------------------------------------------------------


def assert_one_write(responses: list[httpx.Response]) -> httpx.Response:
    """Exactly one fresh 201; the others replays of it or 409 IDEMPOTENCY_KEY_IN_USE."""
    statuses = Counter(response.status_code for response in responses)
    assert set(statuses) <= {201, 409}, [r.text for r in responses]
    fresh = [
        r for r in responses if r.status_code == 201 and "idempotent-replayed" not in r.headers
    ]
    assert len(fresh) == 1, [(r.status_code, dict(r.headers)) for r in responses]
    (original,) = fresh
    for response in responses:
        if response is original:
            continue
        if response.status_code == 201:
            assert_replay(response, original)
        else:
            assert_error(response, 409, "IDEMPOTENCY_KEY_IN_USE")
    return original


async def test_concurrent_duplicates_write_once(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    body = {"title": "Stampede", "content": "only once"}
    responses = await asyncio.gather(
        *(send(client, user_headers, "stampede", body) for _ in range(8))
    )
    original = assert_one_write(list(responses))
    assert await count_posts(client) == 1
    assert_replay(await send(client, user_headers, "stampede", body), original)


async def test_concurrent_duplicate_comments_write_once(
    client: httpx.AsyncClient, user_headers: dict[str, str], other_headers: dict[str, str]
) -> None:
    post = await create_post(client, user_headers, "Hot thread")
    url = f"/posts/{post['id']}/comments"
    body = {"text": "just once"}
    responses = await asyncio.gather(
        *(send(client, other_headers, "comment-stampede", body, url) for _ in range(8))
    )
    original = assert_one_write(list(responses))
    assert [c["id"] for c in await comments_of(client, post["id"])] == [original.json()["id"]]
    assert_replay(await send(client, other_headers, "comment-stampede", body, url), original)


# --- retention ---------------------------------------------------------------------------------


async def test_records_are_kept_for_24_hours(
    client: httpx.AsyncClient, app: FastAPI, user_headers: dict[str, str]
) -> None:
    first_body = {"title": "Day one", "content": "1"}
    first = await send(client, user_headers, "daily", first_body)
    assert_fresh(first)
    later_body = {"title": "Day two", "content": "2"}

    await age_records(app, hours=23)
    assert_replay(await send(client, user_headers, "daily", first_body), first)
    reused = await send(client, user_headers, "daily", later_body)
    assert_error(reused, 422, "IDEMPOTENCY_KEY_REUSED")

    await age_records(app, hours=25)
    second = await send(client, user_headers, "daily", later_body)
    assert_fresh(second)
    assert second.json()["id"] != first.json()["id"]
    assert await count_posts(client) == 2
    assert await record_count(app) == 1  # the expired record made way for the new one
    assert_replay(await send(client, user_headers, "daily", later_body), second)


# --- atomicity ---------------------------------------------------------------------------------


def fail_recording(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make recording the answer (after the write, before the commit) blow up."""
    attempts: list[str] = []

    def explode(scope: idempotency.Scope, answer: idempotency.Answer) -> IdempotencyRecord:
        attempts.append(scope.key)
        raise RuntimeError("crash between the write and its record")

    monkeypatch.setattr(idempotency, "_record", explode)
    return attempts


async def test_write_and_record_commit_together(
    client: httpx.AsyncClient,
    app: FastAPI,
    user_headers: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    body = {"title": "All or nothing", "content": "atomic"}
    attempts = fail_recording(monkeypatch)
    crashed = await send(client, user_headers, "atomic", body)
    assert attempts == ["atomic"]
    assert_error(crashed, 500, "INTERNAL_ERROR")
    assert await count_posts(client) == 0, "the write was rolled back with its record"
    assert await record_count(app) == 0
    assert (await client.get("/posts/1")).status_code == 404

    monkeypatch.undo()
    retry = await send(client, user_headers, "atomic", body)
    assert_fresh(retry)
    assert await count_posts(client) == 1
    assert_replay(await send(client, user_headers, "atomic", body), retry)
    assert await count_posts(client) == 1


async def test_comment_and_record_commit_together(
    client: httpx.AsyncClient,
    user_headers: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    post = await create_post(client, user_headers, "Atomic thread")
    url = f"/posts/{post['id']}/comments"
    fail_recording(monkeypatch)
    crashed = await send(client, user_headers, "atomic-comment", {"text": "hi"}, url)
    assert_error(crashed, 500, "INTERNAL_ERROR")
    assert await comments_of(client, post["id"]) == []
    monkeypatch.undo()
    retry = await send(client, user_headers, "atomic-comment", {"text": "hi"}, url)
    assert_fresh(retry)
    assert_replay(await send(client, user_headers, "atomic-comment", {"text": "hi"}, url), retry)
    assert len(await comments_of(client, post["id"])) == 1


async def test_failure_after_the_commit_replays_instead_of_writing_again(
    client: httpx.AsyncClient,
    app: FastAPI,
    user_headers: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def explode(post: Any) -> None:
        raise RuntimeError("crash after the commit")

    monkeypatch.setattr(app.state.effects, "post_created", explode)
    body = {"title": "Committed then crashed", "content": "x"}
    crashed = await send(client, user_headers, "after-commit", body)
    assert_error(crashed, 500, "INTERNAL_ERROR")
    assert await count_posts(client) == 1
    monkeypatch.undo()
    retry = await send(client, user_headers, "after-commit", body)
    assert retry.status_code == 201
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.json()["title"] == "Committed then crashed"
    assert await count_posts(client) == 1
