"""WebSocket live updates: in-process on both backends, and across two real worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from realtime import SEND_QUEUE_SIZE, LiveSocket
from tests.conftest import (
    TEST_REDIS_URL,
    LiveServer,
    alembic_upgrade,
    create_post,
    flush_redis,
    login,
    need_services,
    register,
)
from tests.test_manage import private_postgres as private_postgres  # the fixture, shared
from tests.worker_processes import WorkerProcesses

RECEIVE_TIMEOUT = 3.0


async def receive(socket: ClientConnection) -> dict[str, Any]:
    raw = await asyncio.wait_for(socket.recv(), RECEIVE_TIMEOUT)
    event: dict[str, Any] = json.loads(raw)
    return event


async def assert_silent(socket: ClientConnection, seconds: float = 0.3) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        unexpected = await asyncio.wait_for(socket.recv(), seconds)
        raise AssertionError(f"expected silence, got {unexpected!r}")


async def closed_code(socket: ClientConnection) -> int | None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(socket.wait_closed(), RECEIVE_TIMEOUT)
    return socket.close_code


def token_of(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


@contextlib.asynccontextmanager
async def connected(url: str, count: int = 1) -> AsyncIterator[list[ClientConnection]]:
    async with contextlib.AsyncExitStack() as stack:
        sockets = [await stack.enter_async_context(websockets.connect(url)) for _ in range(count)]
        yield sockets


@pytest.fixture
async def http(live_server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live_server.http_url) as client:
        yield client


async def test_every_socket_receives_every_event_once(
    live_server: LiveServer, http: httpx.AsyncClient
) -> None:
    await register(http, "alice")
    alice = await login(http, "alice")
    post = await create_post(http, alice, "Live post")
    url = f"{live_server.ws_url}/ws/posts/{post['id']}"
    async with (
        connected(url, 3) as anonymous,
        connected(f"{url}?token={token_of(alice)}") as [author],
    ):
        everyone = [*anonymous, author]
        await asyncio.sleep(0.1)
        created = await http.post(
            f"/posts/{post['id']}/comments", json={"text": "first!"}, headers=alice
        )
        assert created.status_code == 201
        for socket in everyone:
            event = await receive(socket)
            assert event == {"type": "comment_created", "comment": created.json()}

        await author.send("hello, readers")
        for socket in everyone:
            assert await receive(socket) == {
                "type": "message",
                "post_id": post["id"],
                "author": "alice",
                "text": "hello, readers",
            }

        updated = await http.patch(f"/posts/{post['id']}", json={"content": "v2"}, headers=alice)
        assert updated.status_code == 200
        for socket in everyone:
            assert await receive(socket) == {"type": "post_updated", "post": updated.json()}

        comment_id = created.json()["id"]
        deleted = await http.delete(f"/posts/{post['id']}/comments/{comment_id}", headers=alice)
        assert deleted.status_code == 204
        for socket in everyone:
            assert await receive(socket) == {"type": "comment_deleted", "comment_id": comment_id}
        for socket in everyone:
            await assert_silent(socket, 0.1)


async def test_socket_only_gets_its_own_posts_events(
    live_server: LiveServer, http: httpx.AsyncClient
) -> None:
    await register(http, "alice")
    alice = await login(http, "alice")
    watched = await create_post(http, alice, "Watched")
    other = await create_post(http, alice, "Other")
    async with connected(f"{live_server.ws_url}/ws/posts/{watched['id']}") as [socket]:
        await asyncio.sleep(0.1)
        await http.post(f"/posts/{other['id']}/comments", json={"text": "elsewhere"}, headers=alice)
        await assert_silent(socket)


async def test_anonymous_and_invalid_frames_get_errors_and_reach_no_one(
    live_server: LiveServer, http: httpx.AsyncClient
) -> None:
    await register(http, "alice")
    alice = await login(http, "alice")
    post = await create_post(http, alice, "Frames")
    url = f"{live_server.ws_url}/ws/posts/{post['id']}"
    async with (
        connected(url) as [anonymous],
        connected(f"{url}?token={token_of(alice)}") as [signed_in],
        connected(url) as [bystander],
    ):
        await anonymous.send("let me in")
        assert await receive(anonymous) == {"type": "error", "error_code": "AUTH_REQUIRED"}

        for bad in ("", "   ", "x" * 1001):
            await signed_in.send(bad)
            assert await receive(signed_in) == {"type": "error", "error_code": "INVALID_MESSAGE"}
        await signed_in.send(b"binary frame")
        assert await receive(signed_in) == {"type": "error", "error_code": "INVALID_MESSAGE"}

        await assert_silent(bystander)
        await signed_in.send("x" * 1000)  # the longest allowed message still goes through
        assert (await receive(bystander))["text"] == "x" * 1000
        assert (await receive(signed_in))["type"] == "message"


async def test_client_messages_are_rate_limited_per_socket(
    live_server: LiveServer, http: httpx.AsyncClient
) -> None:
    await register(http, "alice")
    alice = await login(http, "alice")
    post = await create_post(http, alice, "Chatty")
    url = f"{live_server.ws_url}/ws/posts/{post['id']}?token={token_of(alice)}"
    async with connected(url) as [socket]:
        for index in range(6):
            await socket.send(f"message {index}")
        events = [await receive(socket) for _ in range(6)]
        assert [event["type"] for event in events].count("message") == 5
        assert {"type": "error", "error_code": "RATE_LIMITED"} in events
        assert socket.close_code is None  # the socket stays open


async def test_refused_for_posts_the_caller_may_not_see(
    live_server: LiveServer, http: httpx.AsyncClient
) -> None:
    await register(http, "alice")
    await register(http, "bob")
    alice = await login(http, "alice")
    bob = await login(http, "bob")
    draft = await create_post(http, alice, "Secret draft", published=False)
    base = f"{live_server.ws_url}/ws/posts"
    for url in (
        f"{base}/{draft['id']}",
        f"{base}/{draft['id']}?token={token_of(bob)}",
        f"{base}/999999",
        f"{base}/{draft['id']}?token=not-a-token",
    ):
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(url):
                pass
        assert refused.value.response.status_code == 403
    async with connected(f"{base}/{draft['id']}?token={token_of(alice)}") as [owner]:
        await owner.send("my own draft")
        assert (await receive(owner))["type"] == "message"


async def test_post_turned_draft_closes_sockets_that_may_no_longer_see_it(
    live_server: LiveServer, http: httpx.AsyncClient
) -> None:
    await register(http, "alice")
    alice = await login(http, "alice")
    post = await create_post(http, alice, "Going dark")
    url = f"{live_server.ws_url}/ws/posts/{post['id']}"
    async with (
        connected(url) as [anonymous],
        connected(f"{url}?token={token_of(alice)}") as [owner],
    ):
        await asyncio.sleep(0.1)
        response = await http.patch(
            f"/posts/{post['id']}", json={"published": False}, headers=alice
        )
        assert response.status_code == 200
        assert await receive(anonymous) == {"type": "post_deleted", "post_id": post["id"]}
        assert await closed_code(anonymous) == 1008
        assert await receive(owner) == {"type": "post_updated", "post": response.json()}
        assert owner.close_code is None


async def test_post_deleted_event_then_close(
    live_server: LiveServer, http: httpx.AsyncClient
) -> None:
    await register(http, "alice")
    alice = await login(http, "alice")
    post = await create_post(http, alice, "Doomed")
    async with connected(f"{live_server.ws_url}/ws/posts/{post['id']}", 2) as sockets:
        await asyncio.sleep(0.1)
        assert (await http.delete(f"/posts/{post['id']}", headers=alice)).status_code == 204
        for socket in sockets:
            assert await receive(socket) == {"type": "post_deleted", "post_id": post["id"]}
            assert await closed_code(socket) == 1000


async def test_a_socket_that_cannot_keep_up_is_closed_not_waited_on() -> None:
    class NeverSends:
        """Stands in for a socket whose peer stopped reading."""

    socket = LiveSocket(
        websocket=NeverSends(),  # type: ignore[arg-type]
        post_id=1,
        user_id=None,
        username=None,
        is_admin=False,
    )
    for index in range(SEND_QUEUE_SIZE):
        socket.offer({"type": "message", "text": str(index)})
    assert not socket.closing
    started = time.perf_counter()
    socket.offer({"type": "message", "text": "one too many"})
    assert time.perf_counter() - started < 0.01
    assert socket.closing
    assert socket.queue.qsize() <= SEND_QUEUE_SIZE
    kinds = []
    while not socket.queue.empty():
        kinds.append(socket.queue.get_nowait()[0])
    assert kinds[-1] == "close"


# --- two real worker processes on PostgreSQL + Redis -------------------------------------------


@pytest.fixture
def two_workers(private_postgres: str, tmp_path: Path) -> Iterator[WorkerProcesses]:
    """Two worker processes on a private PostgreSQL database and the test Redis."""
    need_services("TEST_DATABASE_URL", "TEST_REDIS_URL")
    assert TEST_REDIS_URL is not None
    alembic_upgrade(private_postgres)
    env = {
        "DATABASE_URL": private_postgres,
        "REDIS_URL": TEST_REDIS_URL,
        "RATE_LIMIT_ENABLED": "false",
    }
    with WorkerProcesses(env, tmp_path / "server.log") as workers:
        yield workers


@pytest.mark.slow
async def test_events_reach_sockets_on_every_worker(two_workers: WorkerProcesses) -> None:
    assert TEST_REDIS_URL is not None
    await flush_redis(TEST_REDIS_URL)
    base = two_workers.url
    async with httpx.AsyncClient(base_url=base) as http:
        await register(http, "alice")
        alice = await login(http, "alice")
        post = await create_post(http, alice, "Across workers")
    url = f"{two_workers.ws_url}/ws/posts/{post['id']}"
    async with contextlib.AsyncExitStack() as stack:
        sockets: list[ClientConnection] = []
        while len(sockets) < 40:
            for _ in range(4):
                sockets.append(await stack.enter_async_context(websockets.connect(url)))
            if len(two_workers.pids_holding_connections()) >= 2 and len(sockets) >= 8:
                break
        assert len(two_workers.pids_holding_connections()) == 2, "both workers should hold sockets"
        sender = await stack.enter_async_context(
            websockets.connect(f"{url}?token={token_of(alice)}")
        )
        await asyncio.sleep(0.3)  # both workers' Redis subscriptions are up long before this

        async with httpx.AsyncClient(base_url=base) as http:
            comment = await http.post(
                f"/posts/{post['id']}/comments", json={"text": "to all"}, headers=alice
            )
            assert comment.status_code == 201
            await sender.send("from a socket")
            updated = await http.patch(
                f"/posts/{post['id']}", json={"content": "v2"}, headers=alice
            )
            assert updated.status_code == 200

        for socket in [*sockets, sender]:
            events = [await receive(socket) for _ in range(3)]
            assert {"type": "comment_created", "comment": comment.json()} in events
            assert {"type": "post_updated", "post": updated.json()} in events
            assert {
                "type": "message",
                "post_id": post["id"],
                "author": "alice",
                "text": "from a socket",
            } in events
            await assert_silent(socket, 0.05)  # each event arrived exactly once
