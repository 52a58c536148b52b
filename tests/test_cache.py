"""The `GET /posts/{id}` cache: hits and misses, never a stale read (also across workers and
while a slow reader races a writer), drafts never cached, single-flight, the in-process bounds,
and a Redis outage at run time."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import jwt
import pytest
from conftest import (
    TEST_SECRET,
    create_post,
    login,
    register,
)
from core_helpers import assert_error
from fastapi import FastAPI
from private_services import PrivateRedis

import cache
import crud
import redis_backend
from cache import CachedPost, InProcessPostCache, PostCache, RedisPostCache
from config import Settings
from main import create_app


@pytest.fixture(autouse=True)
def _patient_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a loaded test machine a Redis reply can take longer than the production timeout
    (0.5 s); that would bypass the cache for a retry pause and upset the exact counts here.
    Autouse, so it applies before the app fixture builds its RedisBackend. Outages below kill
    the server, which is refused at once whatever the timeout."""
    monkeypatch.setattr(redis_backend, "SOCKET_TIMEOUT_SECONDS", 5.0)


async def read(
    client: httpx.AsyncClient, post_id: int, headers: dict[str, str] | None = None
) -> httpx.Response:
    return await client.get(f"/posts/{post_id}", headers=headers)


async def expect(
    client: httpx.AsyncClient,
    post_id: int,
    x_cache: str,
    headers: dict[str, str] | None = None,
    **fields: Any,
) -> httpx.Response:
    """A 200 read with this X-Cache whose post has these field values."""
    response = await read(client, post_id, headers)
    assert response.status_code == 200, response.text
    assert response.headers["x-cache"] == x_cache, (x_cache, response.json())
    body = response.json()
    for name, value in fields.items():
        assert body[name] == value, (name, body)
    return response


async def expect_absent(
    client: httpx.AsyncClient, post_id: int, headers: dict[str, str] | None = None
) -> None:
    response = await read(client, post_id, headers)
    assert_error(response, 404, "POST_NOT_FOUND")
    assert "x-cache" not in response.headers or response.headers["x-cache"] != "HIT"


@asynccontextmanager
async def worker(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """Another "worker": its own app and lifespan on the same database (and Redis)."""
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield application, http


# --- hits and misses ---------------------------------------------------------------------------


async def test_second_read_is_a_hit_with_the_same_body_and_etag(
    client: httpx.AsyncClient, user_headers: dict[str, str], other_headers: dict[str, str]
) -> None:
    post = await create_post(client, user_headers, "Cached post")
    first = await expect(client, post["id"], "MISS")
    second = await expect(client, post["id"], "HIT")
    assert first.content == second.content
    assert first.json() == post
    assert first.headers["etag"] == second.headers["etag"]
    assert first.headers["content-type"] == second.headers["content-type"] == "application/json"
    # A published post is one entry for everyone: signed-in readers hit it too.
    third = await expect(client, post["id"], "HIT", other_headers)
    assert third.content == first.content
    # Posts are cached separately.
    other = await create_post(client, user_headers, "Another cached post")
    assert (await expect(client, other["id"], "MISS")).json() == other
    assert (await expect(client, post["id"], "HIT")).json() == post


async def test_unknown_post_is_404_every_time(client: httpx.AsyncClient) -> None:
    for _ in range(3):
        await expect_absent(client, 424242)


async def test_writes_are_never_followed_by_a_stale_read(
    client: httpx.AsyncClient,
    user_headers: dict[str, str],
    admin_headers: dict[str, str],
) -> None:
    post = await create_post(client, user_headers, "Fresh", content="v1")
    pid, url = post["id"], f"/posts/{post['id']}"
    await expect(client, pid, "MISS", content="v1")
    etag = (await expect(client, pid, "HIT", content="v1")).headers["etag"]

    response = await client.put(
        url, json={"title": "Fresh put", "content": "v2"}, headers=user_headers
    )
    assert response.status_code == 200, response.text
    fresh = await expect(client, pid, "MISS", title="Fresh put", content="v2")
    assert fresh.headers["etag"] == response.headers["etag"] != etag
    assert fresh.json() == response.json()
    await expect(client, pid, "HIT", content="v2")

    response = await client.patch(url, json={"content": "v3"}, headers=user_headers)
    assert response.status_code == 200, response.text
    await expect(client, pid, "MISS", content="v3")
    await expect(client, pid, "HIT", content="v3")

    # An admin's write invalidates just the same.
    response = await client.patch(url, json={"content": "v4"}, headers=admin_headers)
    assert response.status_code == 200, response.text
    await expect(client, pid, "MISS", content="v4")
    await expect(client, pid, "HIT", content="v4")

    # Back to a draft: the cached published copy must not be served to anyone.
    response = await client.patch(url, json={"published": False}, headers=user_headers)
    assert response.status_code == 200, response.text
    await expect_absent(client, pid)
    await expect(client, pid, "MISS", user_headers, published=False, content="v4")
    await expect_absent(client, pid)

    response = await client.post(f"{url}/publish", headers=user_headers)
    assert response.status_code == 200, response.text
    await expect(client, pid, "MISS", published=True)
    await expect(client, pid, "HIT", published=True)

    response = await client.delete(url, headers=user_headers)
    assert response.status_code == 204
    await expect_absent(client, pid)
    await expect_absent(client, pid, user_headers)
    await expect_absent(client, pid, admin_headers)


async def test_drafts_are_never_cached(
    client: httpx.AsyncClient,
    user_headers: dict[str, str],
    other_headers: dict[str, str],
    admin_headers: dict[str, str],
) -> None:
    draft = await create_post(client, user_headers, "Secret draft", published=False)
    for _ in range(2):
        owner = await expect(client, draft["id"], "MISS", user_headers, published=False)
        assert owner.json() == draft
    await expect(client, draft["id"], "MISS", admin_headers, published=False)
    for _ in range(3):
        await expect_absent(client, draft["id"])
        await expect_absent(client, draft["id"], other_headers)
    # The owner's reads in between did not leave an entry behind for the anonymous ones.
    await expect(client, draft["id"], "MISS", user_headers)
    await expect_absent(client, draft["id"])

    published = await client.post(f"/posts/{draft['id']}/publish", headers=user_headers)
    assert published.status_code == 200
    await expect(client, draft["id"], "MISS", published=True)
    await expect(client, draft["id"], "HIT", other_headers, published=True)


@pytest.mark.parametrize("settings_overrides", [{"cache_ttl_seconds": 0}])
async def test_ttl_zero_turns_the_cache_off(
    client: httpx.AsyncClient, app: FastAPI, user_headers: dict[str, str]
) -> None:
    assert type(app.state.post_reader.cache) is PostCache
    post = await create_post(client, user_headers, "Uncached", content="one")
    bodies = set()
    for _ in range(4):
        bodies.add((await expect(client, post["id"], "MISS", content="one")).content)
    assert len(bodies) == 1
    response = await client.patch(
        f"/posts/{post['id']}", json={"content": "two"}, headers=user_headers
    )
    assert response.status_code == 200
    await expect(client, post["id"], "MISS", content="two")
    await expect(client, post["id"], "MISS", content="two")


async def test_invalid_bearer_token_is_refused_even_when_cached(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    post = await create_post(client, user_headers, "Cached and guarded")
    await expect(client, post["id"], "MISS")
    await expect(client, post["id"], "HIT")
    now = datetime.now(UTC)
    alice_id = (await client.get("/users/me", headers=user_headers)).json()["id"]

    def token(secret: str, subject: str, expires: datetime) -> str:
        claims = {"sub": subject, "iat": now - timedelta(hours=2), "exp": expires}
        return jwt.encode(claims, secret, algorithm="HS256")

    bad_tokens = {
        "not-a-jwt": "INVALID_TOKEN",
        token(
            "another-secret-of-sufficient-length-0123456789",
            str(alice_id),
            now + timedelta(hours=1),
        ): "INVALID_TOKEN",
        token(TEST_SECRET, str(alice_id), now - timedelta(hours=1)): "TOKEN_EXPIRED",
        token(TEST_SECRET, "987654", now + timedelta(hours=1)): "INVALID_TOKEN",
    }
    for bad, code in bad_tokens.items():
        response = await read(client, post["id"], {"Authorization": f"Bearer {bad}"})
        assert_error(response, 401, code)
        assert response.headers["www-authenticate"] == "Bearer"
        assert post["title"] not in response.text
        assert response.headers.get("x-cache") is None
    # The entry is still there for everyone with a good (or no) token.
    await expect(client, post["id"], "HIT")
    await expect(client, post["id"], "HIT", user_headers)


# --- the in-process cache's bounds -------------------------------------------------------------


def entry(n: int) -> CachedPost:
    return CachedPost(f'"{n}-1"', f'{{"id": {n}}}'.encode())


async def test_in_process_cache_evicts_the_least_recently_used() -> None:
    store = InProcessPostCache(300, max_entries=3)
    for post_id in (1, 2, 3):
        found, generation = await store.lookup(post_id)
        assert found is None
        await store.fill(post_id, generation, entry(post_id))
    assert (await store.lookup(1))[0] == entry(1)  # 1 is now the most recently used
    await store.fill(4, (await store.lookup(4))[1], entry(4))
    assert len(store.entries) == 3
    assert (await store.lookup(2))[0] is None  # the least recently used went
    for post_id in (1, 3, 4):
        assert (await store.lookup(post_id))[0] == entry(post_id)
    await store.fill(5, (await store.lookup(5))[1], entry(5))
    assert (await store.lookup(1))[0] is None  # after the reads above, 1 was the oldest
    assert sorted(store.entries) == [3, 4, 5]


async def test_in_process_cache_entries_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = SimpleNamespace(now=1000.0)
    # Only the cache module's clock moves; the event loop keeps the real one.
    monkeypatch.setattr(cache, "time", SimpleNamespace(monotonic=lambda: clock.now))
    store = InProcessPostCache(1, max_entries=10)
    generation = (await store.lookup(7))[1]
    await store.fill(7, generation, entry(7))
    clock.now += 0.5
    assert (await store.lookup(7))[0] == entry(7)
    clock.now += 0.49
    assert (await store.lookup(7))[0] == entry(7)
    clock.now += 0.02  # 1.01 s after the fill
    assert (await store.lookup(7))[0] is None
    assert 7 not in store.entries
    # A fresh fill lives for another full TTL.
    await store.fill(7, (await store.lookup(7))[1], entry(7))
    clock.now += 0.9
    assert (await store.lookup(7))[0] == entry(7)


async def test_in_process_fill_with_an_old_generation_is_dropped() -> None:
    store = InProcessPostCache(300, max_entries=10)
    _, before = await store.lookup(1)
    await store.invalidate(1)  # a write lands while the reader holds the old row
    await store.fill(1, before, entry(1))
    found, after = await store.lookup(1)
    assert found is None and after != before
    await store.fill(1, after, entry(1))
    assert (await store.lookup(1))[0] == entry(1)


# --- the race: a slow reader must not put back what a writer invalidated -----------------------


class PausedRead:
    """Replaces crud.get_post_row (as cache.PostReader._load calls it): the first call reads the
    row, says so, then waits to be released before handing the (by then old) row back."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.original = crud.get_post_row
        self.row_read = asyncio.Event()
        self.release = asyncio.Event()
        self.calls: list[int] = []
        monkeypatch.setattr(crud, "get_post_row", self)

    async def __call__(self, database: Any, post_id: int) -> Any:
        post = await self.original(database, post_id)
        self.calls.append(post_id)
        if len(self.calls) == 1:
            self.row_read.set()
            await asyncio.wait_for(self.release.wait(), timeout=20)
        return post


class WithoutGenerationCheck(PostCache):
    """The same cache, but a fill always uses the current generation: the bug being guarded."""

    def __init__(self, inner: PostCache) -> None:
        self.inner = inner

    async def lookup(self, post_id: int) -> tuple[CachedPost | None, str]:
        return await self.inner.lookup(post_id)

    async def fill(self, post_id: int, generation: str, entry: CachedPost) -> None:
        _, current = await self.inner.lookup(post_id)
        await self.inner.fill(post_id, current, entry)

    async def invalidate(self, post_id: int) -> None:
        await self.inner.invalidate(post_id)


async def race(
    reader_client: httpx.AsyncClient,
    writer_client: httpx.AsyncClient,
    headers: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    title: str,
    read_while_paused: bool = False,
) -> tuple[int, httpx.Response, httpx.Response]:
    """A reader loads the old row and stalls; the writer PATCHes; then the reader goes on.
    Returns the post id, the slow reader's answer and the writer's answer."""
    post = await create_post(writer_client, headers, title, content="old")
    paused = PausedRead(monkeypatch)
    slow = asyncio.create_task(reader_client.get(f"/posts/{post['id']}"))
    try:
        await asyncio.wait_for(paused.row_read.wait(), timeout=20)
        written = await writer_client.patch(
            f"/posts/{post['id']}", json={"content": "new"}, headers=headers
        )
        assert written.status_code == 200, written.text
        if read_while_paused:
            # Started after the write: must not join the slow reader's flight.
            during = await asyncio.wait_for(read(reader_client, post["id"]), timeout=5)
            assert during.json()["content"] == "new"
            assert during.headers["etag"] == written.headers["etag"]
        assert not slow.done()
    finally:
        paused.release.set()
    slow_answer = await slow
    assert paused.calls[0] == post["id"]
    return post["id"], slow_answer, written


@pytest.mark.parametrize("read_while_paused", [False, True])
async def test_slow_reader_cannot_refill_with_the_old_row(
    client: httpx.AsyncClient,
    app: FastAPI,
    user_headers: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    backend: str,
    read_while_paused: bool,
) -> None:
    expected = RedisPostCache if backend == "scaled" else InProcessPostCache
    assert type(app.state.post_reader.cache) is expected
    pid, slow, written = await race(
        client, client, user_headers, monkeypatch, "Racy", read_while_paused
    )
    # The slow reader started before the write: answering the old row is fine.
    assert slow.status_code == 200
    assert slow.json()["content"] == "old"
    assert slow.headers["x-cache"] == "MISS"
    # ... but it must not have put the old row back into the cache.
    after = await read(client, pid)
    assert after.status_code == 200
    assert after.json()["content"] == "new", after.headers["x-cache"]
    assert after.headers["etag"] == written.headers["etag"]
    await expect(client, pid, "HIT", content="new")


async def test_without_the_generation_check_the_race_would_be_stale(
    client: httpx.AsyncClient,
    app: FastAPI,
    user_headers: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The control experiment: the race above does expose the bug it guards against."""
    reader = app.state.post_reader
    monkeypatch.setattr(reader, "cache", WithoutGenerationCheck(reader.cache))
    pid, slow, _ = await race(client, client, user_headers, monkeypatch, "Racy control")
    assert slow.json()["content"] == "old"
    stale = await read(client, pid)
    assert stale.headers["x-cache"] == "HIT"
    assert stale.json()["content"] == "old"


# --- single-flight -----------------------------------------------------------------------------


class GatedReads:
    """Counts database reads of posts; each waits until `expected` cache lookups are done, so
    every concurrent request has had its chance to join a flight before the read finishes."""

    def __init__(self, app: FastAPI, monkeypatch: pytest.MonkeyPatch, expected: int) -> None:
        self.calls: list[int] = []
        self.lookups = 0
        self.expected = expected
        self.all_looked_up = asyncio.Event()
        store = app.state.post_reader.cache
        original_lookup, original_get = store.lookup, crud.get_post_row

        async def lookup(post_id: int) -> tuple[CachedPost | None, str]:
            result = await original_lookup(post_id)
            self.lookups += 1
            if self.lookups >= self.expected:
                self.all_looked_up.set()
            return result

        async def get_post_row(database: Any, post_id: int) -> Any:
            self.calls.append(post_id)
            await asyncio.wait_for(self.all_looked_up.wait(), timeout=20)
            return await original_get(database, post_id)

        monkeypatch.setattr(store, "lookup", lookup)
        monkeypatch.setattr(crud, "get_post_row", get_post_row)


async def test_concurrent_misses_share_one_database_read(
    client: httpx.AsyncClient,
    app: FastAPI,
    user_headers: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    post = await create_post(client, user_headers, "Popular")
    gated = GatedReads(app, monkeypatch, expected=20)
    responses = await asyncio.gather(*(read(client, post["id"]) for _ in range(20)))
    assert [r.status_code for r in responses] == [200] * 20
    assert gated.calls == [post["id"]]
    assert {r.content for r in responses} == {responses[0].content}
    assert responses[0].json() == post
    assert {r.headers["etag"] for r in responses} == {responses[0].headers["etag"]}
    assert Counter(r.headers["x-cache"] for r in responses) == {"MISS": 20}
    # ... and the shared read filled the cache.
    await expect(client, post["id"], "HIT")
    assert gated.calls == [post["id"]]


async def test_single_flight_does_not_merge_separate_posts(
    client: httpx.AsyncClient,
    app: FastAPI,
    user_headers: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = await create_post(client, user_headers, "First of two", content="one")
    second = await create_post(client, user_headers, "Second of two", content="two")
    gated = GatedReads(app, monkeypatch, expected=20)
    ids = [first["id"], second["id"]] * 10
    responses = await asyncio.gather(*(read(client, post_id) for post_id in ids))
    assert sorted(gated.calls) == sorted([first["id"], second["id"]])
    for post_id, response in zip(ids, responses, strict=True):
        assert response.status_code == 200
        assert response.json() == (first if post_id == first["id"] else second)


async def test_single_flight_still_decides_visibility_per_reader(
    client: httpx.AsyncClient,
    app: FastAPI,
    user_headers: dict[str, str],
    other_headers: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    draft = await create_post(client, user_headers, "Shared draft read", published=False)
    gated = GatedReads(app, monkeypatch, expected=12)
    viewers = [user_headers, None, other_headers] * 4
    responses = await asyncio.gather(*(read(client, draft["id"], h) for h in viewers))
    assert gated.calls == [draft["id"]]  # one read shared by owner and strangers alike
    for headers, response in zip(viewers, responses, strict=True):
        if headers is user_headers:
            assert response.status_code == 200
            assert response.json() == draft
        else:
            assert_error(response, 404, "POST_NOT_FOUND")
    await expect_absent(client, draft["id"])


# --- two workers on one database and one Redis -------------------------------------------------


@pytest.mark.parametrize("backend", ["scaled"])
async def test_no_stale_read_across_workers(
    client: httpx.AsyncClient,
    app: FastAPI,
    settings: Settings,
    user_headers: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with worker(settings) as (other_app, other):
        assert other_app.state.post_reader is not app.state.post_reader
        assert type(other_app.state.post_reader.cache) is RedisPostCache
        post = await create_post(client, user_headers, "Two workers", content="v1")
        pid, url = post["id"], f"/posts/{post['id']}"

        await expect(other, pid, "MISS", content="v1")
        await expect(other, pid, "HIT", content="v1")
        await expect(client, pid, "HIT", content="v1")  # one shared cache

        response = await client.patch(url, json={"content": "v2"}, headers=user_headers)
        assert response.status_code == 200
        await expect(other, pid, "MISS", content="v2")
        await expect(other, pid, "HIT", content="v2")

        response = await client.put(url, json={"title": "Two workers put"}, headers=user_headers)
        assert response.status_code == 200
        await expect(other, pid, "MISS", title="Two workers put")

        response = await client.patch(url, json={"published": False}, headers=user_headers)
        assert response.status_code == 200
        await expect_absent(other, pid)
        await expect(other, pid, "MISS", user_headers, published=False)
        await expect_absent(other, pid)
        await expect_absent(client, pid)

        response = await client.post(f"{url}/publish", headers=user_headers)
        assert response.status_code == 200
        await expect(other, pid, "MISS", published=True)
        await expect(client, pid, "HIT", published=True)

        # The other way round: written through the second worker, read through the first.
        response = await other.patch(url, json={"content": "v3"}, headers=user_headers)
        assert response.status_code == 200
        await expect(client, pid, "MISS", content="v3")

        # The race across workers: the second worker's reader stalls, the first one writes.
        raced, slow, written = await race(other, client, user_headers, monkeypatch, "Racy x2")
        assert slow.json()["content"] == "old"
        for http in (other, client):
            fresh = await read(http, raced)
            assert fresh.json()["content"] == "new", fresh.headers["x-cache"]
            assert fresh.headers["etag"] == written.headers["etag"]

        response = await client.delete(url, headers=user_headers)
        assert response.status_code == 204
        await expect_absent(other, pid)
        await expect_absent(other, pid, user_headers)


# --- Redis going away at run time --------------------------------------------------------------


def settings_for(database_url: str, redis_url: str) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=database_url,
        redis_url=redis_url,
        secret_key=TEST_SECRET,
        environment="test",
        log_format="text",
        rate_limit_read="100000/minute",
        rate_limit_write="100000/minute",
        rate_limit_login="100000/minute",
    )


@pytest.mark.parametrize("backend", ["embedded", "scaled"])
async def test_redis_outage_bypasses_the_cache_and_recovers(
    database_url: str, private_redis: PrivateRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_backend, "RETRY_AFTER_SECONDS", 0.2)
    async with worker(settings_for(database_url, private_redis.url)) as (app, client):
        assert type(app.state.post_reader.cache) is RedisPostCache
        await register(client, "alice")
        headers = await login(client, "alice")
        post = await create_post(client, headers, "Survives", content="before")
        doomed = await create_post(client, headers, "Doomed")
        await expect(client, post["id"], "MISS")
        await expect(client, post["id"], "HIT", content="before")
        await expect(client, doomed["id"], "MISS")
        await expect(client, doomed["id"], "HIT")

        private_redis.stop()
        for _ in range(3):  # bypassed: read from the database, never a 500
            await expect(client, post["id"], "MISS", content="before")
        response = await client.patch(
            f"/posts/{post['id']}", json={"content": "during"}, headers=headers
        )
        assert response.status_code == 200, response.text
        await expect(client, post["id"], "MISS", content="during")
        created = await create_post(client, headers, "Written during the outage")
        await expect(client, created["id"], "MISS")
        assert (await client.delete(f"/posts/{doomed['id']}", headers=headers)).status_code == 204
        await expect_absent(client, doomed["id"])
        await asyncio.sleep(0.3)  # a retry is due, Redis still down: still fine
        await expect(client, post["id"], "MISS", content="during")

        private_redis.start()  # same port, empty
        await asyncio.sleep(0.3)  # past RETRY_AFTER_SECONDS
        await expect(client, post["id"], "MISS", content="during")
        await expect(client, post["id"], "HIT", content="during")
        await expect(client, created["id"], "MISS")
        await expect(client, created["id"], "HIT")
        await expect_absent(client, doomed["id"])
        body_key, _ = RedisPostCache._keys(post["id"])
        assert private_redis.client().exists(body_key), "cached in Redis again"


@pytest.mark.parametrize("backend", ["embedded", "scaled"])
async def test_invalidation_during_an_outage_is_replayed(
    database_url: str, private_redis: PrivateRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis comes back with the data it had (a snapshot here; a network partition alike):
    the entries cached before the outage, written to during it, must not be served."""
    monkeypatch.setattr(redis_backend, "RETRY_AFTER_SECONDS", 0.2)
    async with worker(settings_for(database_url, private_redis.url)) as (app, client):
        await register(client, "alice")
        headers = await login(client, "alice")
        changed = await create_post(client, headers, "Changed in the dark", content="old")
        deleted = await create_post(client, headers, "Deleted in the dark")
        hidden = await create_post(client, headers, "Hidden in the dark")
        for post in (changed, deleted, hidden):
            await expect(client, post["id"], "MISS")
            await expect(client, post["id"], "HIT")
        private_redis.client().save()  # what Redis will come back with

        private_redis.stop()
        url = f"/posts/{changed['id']}"
        assert (
            await client.patch(url, json={"content": "new"}, headers=headers)
        ).status_code == 200
        assert (await client.delete(f"/posts/{deleted['id']}", headers=headers)).status_code == 204
        response = await client.patch(
            f"/posts/{hidden['id']}", json={"published": False}, headers=headers
        )
        assert response.status_code == 200
        assert app.state.post_reader.cache.pending == {changed["id"], deleted["id"], hidden["id"]}

        private_redis.start()
        stale_keys = [RedisPostCache._keys(p["id"])[0] for p in (changed, deleted, hidden)]
        assert private_redis.client().exists(*stale_keys) == 3, "the old entries are back"
        await asyncio.sleep(0.3)

        await expect(client, changed["id"], "MISS", content="new")
        await expect(client, changed["id"], "HIT", content="new")
        await expect_absent(client, deleted["id"])
        await expect_absent(client, hidden["id"])
        await expect(client, hidden["id"], "MISS", headers, published=False)
        assert app.state.post_reader.cache.pending == set()
