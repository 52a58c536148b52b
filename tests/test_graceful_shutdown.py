"""Graceful shutdown of a real server (`uvicorn --workers 2 --timeout-graceful-shutdown N`, as
docker/start.sh runs it) on SIGTERM to its supervisor, as `docker stop` sends it: WebSockets are
closed with 1001 so clients reconnect elsewhere, a request in flight still gets its answer, a
request that never ends holds the exit up for at most the timeout, and the exit status is 0."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest
import websockets
from conftest import PASSWORD, alembic_upgrade
from worker_processes import WorkerProcesses

pytestmark = pytest.mark.slow

GRACE_SECONDS = 4


@pytest.fixture
def server(tmp_path: Path) -> WorkerProcesses:
    database = tmp_path / "blog.db"
    alembic_upgrade(f"sqlite+aiosqlite:///{database}")
    return WorkerProcesses(
        {
            "DATABASE_URL": f"sqlite+aiosqlite:///{database}",
            "REDIS_URL": "",
            "RATE_LIMIT_ENABLED": "false",
            "SMTP_HOST": "",
        },
        tmp_path / "run" / "server.log",
        workers=2,
        options=("--timeout-graceful-shutdown", str(GRACE_SECONDS)),
    )


def sign_up_and_post(url: str) -> tuple[dict[str, str], int]:
    with httpx.Client(base_url=url, timeout=30) as client:
        account = {"username": "alice", "email": "alice@example.com", "password": PASSWORD}
        assert client.post("/auth/register", json=account).status_code == 201
        token = client.post("/auth/login", data={"username": "alice", "password": PASSWORD})
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        post = client.post(
            "/posts", json={"title": "Live", "content": "c", "published": True}, headers=headers
        )
        assert post.status_code == 201
        return headers, post.json()["id"]


def start_slow_post(port: int, headers: dict[str, str], body: bytes) -> socket.socket:
    """A POST whose headers and first half of its body are sent; the rest is up to the caller."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = (
        f"POST /posts HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Authorization: {headers['Authorization']}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    connection.sendall(head.encode() + body[: len(body) // 2])
    return connection


def read_response(connection: socket.socket) -> bytes:
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
        head, _, rest = received.partition(b"\r\n\r\n")
        length = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-")]
        lengths = [int(line.split(b":")[1]) for line in length if b"length" in line.lower()]
        if lengths and len(rest) >= lengths[0]:
            break
    return received


async def test_sigterm_closes_sockets_with_1001_finishes_requests_and_exits_0(
    server: WorkerProcesses,
) -> None:
    with server:
        assert server.process is not None
        headers, post_id = sign_up_and_post(server.url)
        sockets = [
            await websockets.connect(f"{server.ws_url}/ws/posts/{post_id}") for _ in range(4)
        ]
        body = json.dumps({"title": "In flight", "content": "written during the shutdown"})
        slow = start_slow_post(server.port, headers, body.encode())
        await asyncio.sleep(0.3)  # the request is in the application, waiting for its body

        stopped_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        for live in sockets:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(live.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        assert time.monotonic() - stopped_at < 3

        slow.sendall(body.encode()[len(body) // 2 :])
        answer = read_response(slow)
        assert answer.startswith(b"HTTP/1.1 201 "), answer
        assert slow.recv(1) == b""  # and then the connection is closed, not kept alive
        slow.close()

        returncode = server.process.wait(timeout=GRACE_SECONDS + 20)
        log = server.log_text()
        assert returncode == 0, log
        assert "Traceback" not in log
    # The write acknowledged during the shutdown is there after it.
    with server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            titles = [post["title"] for post in (await client.get("/posts")).json()]
        assert "In flight" in titles


async def test_a_request_that_never_ends_holds_the_exit_for_the_timeout_at_most(
    server: WorkerProcesses,
) -> None:
    with server:
        assert server.process is not None
        headers, _ = sign_up_and_post(server.url)
        stalled = start_slow_post(server.port, headers, b'{"title": "never", "content": "x"}')
        await asyncio.sleep(0.3)
        stopped_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        returncode = server.process.wait(timeout=GRACE_SECONDS + 20)
        took = time.monotonic() - stopped_at
        stalled.close()
        log = server.log_text()
        assert returncode == 0, log
        assert GRACE_SECONDS - 0.5 < took < GRACE_SECONDS + 10, log
        assert "timeout graceful shutdown exceeded" in log


def test_a_lone_server_process_exits_0_on_sigterm(tmp_path: Path) -> None:
    """Without --workers there is no supervisor: uvicorn would die of the SIGTERM it raises
    again after its graceful shutdown (status -15); the service exits 0 instead."""
    database = tmp_path / "blog.db"
    alembic_upgrade(f"sqlite+aiosqlite:///{database}")
    server = WorkerProcesses(
        {"DATABASE_URL": f"sqlite+aiosqlite:///{database}", "REDIS_URL": ""},
        tmp_path / "run" / "server.log",
        workers=1,
    )
    with server:
        assert server.process is not None
        assert httpx.get(f"{server.url}/", timeout=10).status_code == 200
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0, server.log_text()
