"""WebSocket live updates: in-process on both backends, and across two real worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket as socket_module
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import websockets
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy import delete, update
from websockets.asyncio.client import ClientConnection

from errors import TooManySockets
from models import User
from realtime import SEND_QUEUE_SIZE, LiveSocket, Viewers
from redis_backend import RedisBackend
from socket_limits import SocketLimits
from tests.conftest import (
    TEST_REDIS_URL,
    TEST_SECRET,
    LiveServer,
    alembic_upgrade,
    create_post,
    flush_redis,
    login,
    make_admin,
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


async def assert_refused(
    url: str, status: int, error_code: str, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """The handshake is answered over HTTP with this status and the error envelope."""
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(url, additional_headers=headers):
            pass
    response = refused.value.response
    assert response.status_code == status, (url, response.body)
    assert response.headers["content-type"] == "application/json"
    if status == 429:
        assert int(response.headers["Retry-After"]) >= 1, response.headers
    body: dict[str, Any] = json.loads(response.body)
    assert body["error_code"] == error_code, body
    if error_code == "VALIDATION_ERROR":
        assert body["detail"][0]["loc"][:2] == ["path", "post_id"], body
    else:
        assert isinstance(body["detail"], str) and body["detail"], body
    return body


async def drain(socket: ClientConnection, quiet: float = 0.5) -> list[dict[str, Any]]:
    """Every event that arrives until the socket has been quiet for `quiet` seconds."""
    events = []
    with contextlib.suppress(asyncio.TimeoutError):
        while True:
            events.append(json.loads(await asyncio.wait_for(socket.recv(), quiet)))
    return events


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


async def test_client_messages_are_rate_limited_per_user_not_per_socket(
    live_server: LiveServer, http: httpx.AsyncClient
) -> None:
    """Pins SocketLimits.allow_message: 5 messages a second per user, on all sockets together
    (per socket, 100 sockets turned a handful of frames each into a flood)."""
    await register(http, "alice")
    alice = await login(http, "alice")
    post = await create_post(http, alice, "Chatty")
    url = f"{live_server.ws_url}/ws/posts/{post['id']}?token={token_of(alice)}"
    async with connected(url, 3) as sockets, connected(url.split("?")[0]) as [reader]:
        for index in range(6):
            await sockets[index % 3].send(f"message {index}")
        errors = 0
        for socket in sockets:
            events = await drain(socket)
            errors += events.count({"type": "error", "error_code": "RATE_LIMITED"})
            assert [e["type"] for e in events].count("message") == 5
        assert errors == 1  # the sixth message, on whichever socket sent it
        received = [await receive(reader) for _ in range(5)]
        assert {event["type"] for event in received} == {"message"}
        await assert_silent(reader)
        for socket in sockets:
            assert socket.close_code is None  # the sockets stay open


async def test_refused_for_posts_the_caller_may_not_see(
    live_server: LiveServer, http: httpx.AsyncClient
) -> None:
    await register(http, "alice")
    await register(http, "bob")
    alice = await login(http, "alice")
    bob = await login(http, "bob")
    draft = await create_post(http, alice, "Secret draft", published=False)
    base = f"{live_server.ws_url}/ws/posts"
    for url, status, code in (
        (f"{base}/{draft['id']}", 404, "POST_NOT_FOUND"),
        (f"{base}/{draft['id']}?token={token_of(bob)}", 404, "POST_NOT_FOUND"),
        (f"{base}/999999", 404, "POST_NOT_FOUND"),
        (f"{base}/{draft['id']}?token=not-a-token", 401, "INVALID_TOKEN"),
        (f"{base}/abc", 422, "VALIDATION_ERROR"),
        (f"{base}/0", 422, "VALIDATION_ERROR"),
        (f"{base}/99999999999", 422, "VALIDATION_ERROR"),
    ):
        await assert_refused(url, status, code)
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


@contextlib.contextmanager
def workers_on_postgres(
    private_postgres: str, tmp_path: Path, **settings: str
) -> Iterator[WorkerProcesses]:
    """Two worker processes on a private PostgreSQL database and the test Redis."""
    need_services("TEST_DATABASE_URL", "TEST_REDIS_URL")
    assert TEST_REDIS_URL is not None
    alembic_upgrade(private_postgres)
    env = {
        "DATABASE_URL": private_postgres,
        "REDIS_URL": TEST_REDIS_URL,
        "RATE_LIMIT_ENABLED": "false",
        **settings,
    }
    with WorkerProcesses(env, tmp_path / "server.log") as workers:
        yield workers


@pytest.fixture
def two_workers(private_postgres: str, tmp_path: Path) -> Iterator[WorkerProcesses]:
    """Two worker processes on a private PostgreSQL database and the test Redis."""
    with workers_on_postgres(private_postgres, tmp_path) as workers:
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


# --- authorisation after the handshake (API1/API5) ----------------------------------------------


def short_lived_token(user_id: int, seconds: float) -> str:
    now = datetime.now(UTC)
    claims = {"sub": str(user_id), "iat": now, "exp": now + timedelta(seconds=seconds)}
    return jwt.encode(claims, TEST_SECRET, algorithm="HS256")


async def set_role(app: FastAPI, user_id: int, role: str) -> None:
    async with app.state.database.sessionmaker() as session:
        await session.execute(update(User).where(User.id == user_id).values(role=role))
        await session.commit()


async def delete_user(app: FastAPI, user_id: int) -> None:
    async with app.state.database.sessionmaker() as session:
        await session.execute(delete(User).where(User.id == user_id))
        await session.commit()


async def test_a_socket_is_closed_when_its_token_expires(
    live_server: LiveServer, http: httpx.AsyncClient
) -> None:
    """Pins the expiry timer in routes.realtime.post_updates (and LiveSocket.may_still_speak):
    a token valid at the handshake does not keep the socket authorised after it expires."""
    alice = await register(http, "alice")
    post = await create_post(http, await login(http, "alice"), "Short-lived")
    url = f"{live_server.ws_url}/ws/posts/{post['id']}"
    async with (
        connected(f"{url}?token={short_lived_token(alice['id'], 2)}") as [socket],
        connected(url) as [bystander],
    ):
        await socket.send("while valid")
        assert (await receive(bystander))["text"] == "while valid"
        assert await closed_code(socket) == 1008
        await assert_silent(bystander)
    await assert_refused(f"{url}?token={short_lived_token(alice['id'], -1)}", 401, "TOKEN_EXPIRED")


async def test_a_demoted_admin_stops_getting_a_drafts_events(
    live_server: LiveServer, http: httpx.AsyncClient
) -> None:
    """Pins LiveSocket.still_may_see_draft, checked by the sender before each event on a draft:
    an admin demoted after the handshake gets `post_deleted` and a 1008 close instead of the
    draft's next event, while its author keeps getting them."""
    live_server.app.state.hub.viewers.max_age = 0.1  # the bound, shortened for the test
    await register(http, "alice")
    admin = await register(http, "root_admin")
    await make_admin(live_server.app, "root_admin")
    alice = await login(http, "alice")
    admin_headers = await login(http, "root_admin")
    draft = await create_post(http, alice, "Secret", published=False)
    url = f"{live_server.ws_url}/ws/posts/{draft['id']}"
    async with (
        connected(f"{url}?token={token_of(alice)}") as [author],
        connected(f"{url}?token={token_of(admin_headers)}") as [moderator],
    ):
        first = await http.patch(f"/posts/{draft['id']}", json={"content": "v2"}, headers=alice)
        for socket in (author, moderator):
            assert await receive(socket) == {"type": "post_updated", "post": first.json()}
        await set_role(live_server.app, admin["id"], "user")
        await asyncio.sleep(0.2)
        second = await http.patch(f"/posts/{draft['id']}", json={"content": "v3"}, headers=alice)
        assert await receive(author) == {"type": "post_updated", "post": second.json()}
        assert await receive(moderator) == {"type": "post_deleted", "post_id": draft["id"]}
        assert await closed_code(moderator) == 1008
        comment = await http.post(
            f"/posts/{draft['id']}/comments", json={"text": "still mine"}, headers=alice
        )
        assert (await receive(author))["comment"] == comment.json()
        assert author.close_code is None


async def test_a_deleted_users_messages_reach_no_one(
    live_server: LiveServer, http: httpx.AsyncClient
) -> None:
    """Pins LiveSocket.may_still_speak: the sender is re-checked (a cached read, at most
    VIEWER_CHECK_SECONDS old) before a message fans out; a deleted user's socket is closed."""
    live_server.app.state.hub.viewers.max_age = 0.1
    await register(http, "alice")
    bob = await register(http, "bob")
    post = await create_post(http, await login(http, "alice"), "Public")
    bob_token = token_of(await login(http, "bob"))
    url = f"{live_server.ws_url}/ws/posts/{post['id']}"
    async with connected(f"{url}?token={bob_token}") as [sender], connected(url) as [reader]:
        await sender.send("before")
        assert (await receive(reader))["text"] == "before"
        await delete_user(live_server.app, bob["id"])
        await asyncio.sleep(0.2)
        await sender.send("after")
        assert await closed_code(sender) == 1008
        await assert_silent(reader)
    await assert_refused(f"{url}?token={bob_token}", 401, "INVALID_TOKEN")


@pytest.mark.parametrize(
    "settings_overrides", [{"ws_max_sockets_per_user": 2, "ws_max_sockets_per_ip": 4}]
)
async def test_open_sockets_are_capped_per_user_and_per_ip(
    live_server: LiveServer, http: httpx.AsyncClient
) -> None:
    """Pins SocketLimits.acquire/release (in process, or through Redis): past the caps the
    handshake is 429 RATE_LIMITED; a closed socket frees its place."""
    await register(http, "alice")
    await register(http, "bob")
    alice, bob = await login(http, "alice"), await login(http, "bob")
    post = await create_post(http, alice, "Popular")
    url = f"{live_server.ws_url}/ws/posts/{post['id']}"
    async with connected(f"{url}?token={token_of(alice)}", 2):
        await assert_refused(f"{url}?token={token_of(alice)}", 429, "RATE_LIMITED")
        await assert_refused(url, 429, "RATE_LIMITED", headers=alice)  # the header form too
        async with connected(f"{url}?token={token_of(bob)}") as [bobs]:
            async with connected(url):  # four from this address now
                body = await assert_refused(url, 429, "RATE_LIMITED")
                assert "address" in body["detail"]
                await assert_refused(f"{url}?token={token_of(bob)}", 429, "RATE_LIMITED")
            await bobs.send("still here")
            assert (await receive(bobs))["text"] == "still here"
    async with connected(f"{url}?token={token_of(alice)}", 2) as again:  # places were freed
        assert all(socket.close_code is None for socket in again)


async def test_a_crashed_workers_socket_leases_run_out() -> None:
    """Pins the lease expiry of SocketLimits on Redis: a worker that dies without releasing its
    sockets blocks their places only until their leases run out; a live worker's renewed
    leases outlast the lease time."""
    need_services("TEST_REDIS_URL")
    assert TEST_REDIS_URL is not None
    await flush_redis(TEST_REDIS_URL)
    backend = RedisBackend(TEST_REDIS_URL)
    try:
        crashed, alive = (SocketLimits(backend, 2, 100, lease_seconds=1.0) for _ in range(2))
        for _ in range(2):
            await crashed.acquire(7, "10.0.0.1")
        with pytest.raises(TooManySockets):
            await alive.acquire(7, "10.0.0.2")  # counted across "workers"
        kept = [await alive.acquire(8, "10.0.0.2") for _ in range(2)]
        for _ in range(3):  # 1.5 s: past the lease of what is not renewed
            await asyncio.sleep(0.5)
            await alive.renew()
        await alive.acquire(7, "10.0.0.2")  # the crashed worker's places are free again
        with pytest.raises(TooManySockets):
            await alive.acquire(8, "10.0.0.2")  # the renewed ones still count
        await alive.release(kept[0])
        await alive.acquire(8, "10.0.0.2")  # a released place is free at once
    finally:
        await backend.close()


@pytest.fixture
def capped_workers(private_postgres: str, tmp_path: Path) -> Iterator[WorkerProcesses]:
    """Two worker processes with small open-socket caps, on PostgreSQL and the test Redis."""
    caps = {"WS_MAX_SOCKETS_PER_USER": "3", "WS_MAX_SOCKETS_PER_IP": "30"}
    with workers_on_postgres(private_postgres, tmp_path, **caps) as workers:
        yield workers


def hang_up_mid_handshake(port: int, path: str) -> None:
    """Send a WebSocket upgrade request and close the connection before any answer."""
    with socket_module.create_connection(("127.0.0.1", port)) as raw:
        raw.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )


@pytest.mark.slow
async def test_socket_caps_hold_across_workers_and_refusals_log_no_error(
    capped_workers: WorkerProcesses,
) -> None:
    """Pins SocketLimits on Redis (counts shared by the workers, released on close) and the
    quiet refusals (errors.deny_websocket, logging_setup.DeniedHandshakeIsNoError): on real
    worker processes every refused handshake answers in the envelope, and none logs an ERROR,
    not even one whose client hangs up before the answer."""
    assert TEST_REDIS_URL is not None
    await flush_redis(TEST_REDIS_URL)
    workers = capped_workers
    async with httpx.AsyncClient(base_url=workers.url) as http:
        await register(http, "alice")
        alice = await login(http, "alice")
        post = await create_post(http, alice, "Capped")
    url = f"{workers.ws_url}/ws/posts/{post['id']}"
    redis_client = Redis.from_url(TEST_REDIS_URL)
    try:
        async with contextlib.AsyncExitStack() as stack:
            mine = [
                await stack.enter_async_context(
                    websockets.connect(f"{url}?token={token_of(alice)}")
                )
                for _ in range(3)
            ]
            await assert_refused(f"{url}?token={token_of(alice)}", 429, "RATE_LIMITED")
            members = await redis_client.zrange("blog:ws:sockets:user:1", 0, -1)
            assert len(members) == 3
            assert {int(m.split(b"-")[0]) for m in members} <= workers.worker_pids()
            others = [await stack.enter_async_context(websockets.connect(url)) for _ in range(27)]
            body = await assert_refused(url, 429, "RATE_LIMITED")
            assert "address" in body["detail"]
            owners = workers.connection_pids()
            held_by = {owners[s.local_address[1]] for s in [*mine, *others]}
            assert held_by == workers.worker_pids(), "both workers should hold sockets"
            await others[0].close()
            await asyncio.sleep(0.2)
            others[0] = await stack.enter_async_context(websockets.connect(url))  # freed
            assert await redis_client.zcard("blog:ws:sockets:ip:127.0.0.1") == 30
        await asyncio.sleep(0.5)
        assert await redis_client.zcard("blog:ws:sockets:ip:127.0.0.1") == 0
        assert await redis_client.zcard("blog:ws:sockets:user:1") == 0
    finally:
        await redis_client.aclose()

    await assert_refused(f"{workers.ws_url}/ws/posts/999999", 404, "POST_NOT_FOUND")
    await assert_refused(f"{url}?token=not-a-token", 401, "INVALID_TOKEN")
    await assert_refused(f"{workers.ws_url}/ws/posts/abc", 422, "VALIDATION_ERROR")
    for path in ("/ws/posts/999999", "/ws/posts/abc", f"/ws/posts/{post['id']}?token=x"):
        hang_up_mid_handshake(workers.port, path)
    await asyncio.sleep(1.0)
    log = workers.log_text()
    assert '"WebSocket /ws/posts/abc" 422' in log
    assert '"WebSocket /ws/posts/999999" 404' in log
    assert " ERROR " not in log and "Traceback" not in log, log


async def test_viewer_checks_read_each_user_once_per_bound() -> None:
    """Pins realtime.Viewers: however many sockets ask at once, one read per user; a read is
    reused for at most max_age seconds, then the database is asked again."""
    reads: list[int] = []

    async def load(user_id: int) -> User | None:
        reads.append(user_id)
        await asyncio.sleep(0.05)
        return User(id=user_id, username=f"u{user_id}", role="user") if user_id < 9 else None

    viewers = Viewers(load, max_age=0.3)
    users = await asyncio.gather(*(viewers.current(1) for _ in range(50)), viewers.current(9))
    assert reads == [1, 9]
    assert [user.id if user else None for user in users] == [1] * 50 + [None]
    assert (await viewers.current(1)) is users[0]  # within the bound: no read
    await asyncio.sleep(0.35)
    await viewers.current(1)
    assert reads == [1, 9, 1]
