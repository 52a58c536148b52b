"""Slugs, tags and their cache and live events across two real worker processes on PostgreSQL
+ Redis (the fixtures and helpers of test_races_workers)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets
from test_races_workers import (  # noqa: F401  (fixtures)
    TIMEOUT,
    authors,
    database,
    fetch,
    fire,
    lines_to_both_workers,
    redis_server,
    show,
    workers,
)
from websockets.asyncio.client import ClientConnection
from worker_processes import WorkerProcesses

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


async def test_creates_whose_titles_slugify_alike_get_distinct_slugs(
    workers: WorkerProcesses,  # noqa: F811
    authors: list[dict[str, str]],  # noqa: F811
    database: str,  # noqa: F811
) -> None:
    async with lines_to_both_workers(workers, 8) as lines:
        requests = [
            line.client.build_request(
                "POST",
                "/posts",
                json={"title": "Slug race" + "!" * (number + 1), "content": "x"},
                headers=authors[number % 2],
            )
            for number, line in enumerate(lines)
        ]
        log_from = len(workers.log_text())
        responses = await fire(lines, requests)
    show(workers, lines, responses, log_from)
    assert [response.status_code for response in responses] == [201] * 8
    slugs = sorted(response.json()["slug"] for response in responses)
    assert slugs == sorted(["slug-race", *(f"slug-race-{n}" for n in range(2, 9))])
    stored = await fetch(database, "SELECT slug FROM posts WHERE slug LIKE 'slug-race%'")
    assert sorted(row["slug"] for row in stored) == slugs


async def test_tag_change_reaches_every_worker_cache_and_slug(
    workers: WorkerProcesses,  # noqa: F811
    authors: list[dict[str, str]],  # noqa: F811
) -> None:
    alice = authors[0]
    async with httpx.AsyncClient(base_url=workers.url, timeout=TIMEOUT) as http:
        created = await http.post(
            "/posts", json={"title": "Cached tags", "content": "x", "tags": ["old"]}, headers=alice
        )
        assert created.status_code == 201, created.text
        post_id = created.json()["id"]
    async with lines_to_both_workers(workers, 4) as lines:
        for line in lines:  # warm the shared cache from both workers
            for path in (f"/posts/{post_id}", "/posts/slug/cached-tags"):
                read = await line.client.get(path)
                assert read.json()["tags"] == ["old"]
        assert (await lines[0].client.get(f"/posts/{post_id}")).headers["x-cache"] == "HIT"
        changed = await lines[0].client.patch(
            f"/posts/{post_id}", json={"tags": ["new", "Fresh"]}, headers=alice
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["tags"] == ["fresh", "new"]
        for line in lines:
            for path in (f"/posts/{post_id}", "/posts/slug/cached-tags"):
                read = await line.client.get(path)
                assert read.json()["tags"] == ["fresh", "new"], (line.worker, path)
                assert read.headers["etag"] == changed.headers["etag"]
            listed = await line.client.get("/posts", params={"tag": "fresh"})
            assert [post["id"] for post in listed.json()] == [post_id]
        # a slug change: the old slug is gone on every worker, the new one answers
        moved = await lines[1].client.patch(
            f"/posts/{post_id}", json={"slug": "moved-tags"}, headers=alice
        )
        assert moved.status_code == 200, moved.text
        for line in lines:
            assert (await line.client.get("/posts/slug/cached-tags")).status_code == 404
            assert (await line.client.get("/posts/slug/moved-tags")).json()["id"] == post_id


@contextlib.asynccontextmanager
async def sockets_on_both_workers(
    server: WorkerProcesses, post_id: int
) -> AsyncIterator[list[ClientConnection]]:
    wanted = server.worker_pids()
    async with contextlib.AsyncExitStack() as stack:
        sockets: dict[int, ClientConnection] = {}
        for _ in range(40):
            socket = await stack.enter_async_context(
                websockets.connect(f"{server.ws_url}/ws/posts/{post_id}")
            )
            owner = server.connection_pids().get(socket.local_address[1])
            if owner in wanted and owner not in sockets:
                sockets[owner] = socket
            if set(sockets) == wanted:
                break
            await asyncio.sleep(0.05)
        assert set(sockets) == wanted, "sockets on one worker only"
        yield list(sockets.values())


async def next_update(socket: ClientConnection) -> dict[str, Any]:
    while True:
        event: dict[str, Any] = json.loads(await asyncio.wait_for(socket.recv(), TIMEOUT))
        if event["type"] == "post_updated":
            return event


async def test_tag_and_slug_changes_reach_sockets_on_both_workers(
    workers: WorkerProcesses,  # noqa: F811
    authors: list[dict[str, str]],  # noqa: F811
) -> None:
    alice = authors[0]
    async with httpx.AsyncClient(base_url=workers.url, timeout=TIMEOUT) as http:
        created = await http.post(
            "/posts", json={"title": "Live tags", "content": "x"}, headers=alice
        )
        post_id = created.json()["id"]
        async with sockets_on_both_workers(workers, post_id) as sockets:
            changed = await http.patch(
                f"/posts/{post_id}", json={"tags": ["live"], "slug": "live-now"}, headers=alice
            )
            assert changed.status_code == 200, changed.text
            for socket in sockets:
                event = await next_update(socket)
                assert event["post"] == changed.json()
                assert event["post"]["tags"] == ["live"]
                assert event["post"]["slug"] == "live-now"
