"""Races (issue 6) across two real worker processes on PostgreSQL + Redis: one title, one If-Match
winner, one write per Idempotency-Key, with every race's requests spread over both workers."""

from __future__ import annotations

import asyncio
import itertools
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
from conftest import (
    PASSWORD,
    TEST_DATABASE_URL,
    alembic_upgrade,
    free_port,
    need_services,
    redis_server_binary,
)
from core_helpers import assert_error
from private_services import PrivateRedis, scratch_database
from test_idempotency import assert_one_write, assert_replay
from worker_processes import WorkerProcesses

from config import normalize_database_url

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

TIMEOUT = 30.0  # seconds per request; the machine is shared with benchmarks
# Plain HTTP needs no TLS; one shared context spares each of the many clients loading the CAs.
SSL_CONTEXT = ssl.create_default_context()


async def execute(url: str, statement: str) -> None:
    """Run one statement on the database at `url`."""
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def fetch(url: str, query: str, *args: Any) -> list[dict[str, Any]]:
    """Rows straight from the database, past every worker and cache."""
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return [dict(row) for row in await connection.fetch(query, *args)]
    finally:
        await connection.close()


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """A migrated database of the module's own on TEST_DATABASE_URL's server, dropped after."""
    need_services("TEST_DATABASE_URL")
    assert TEST_DATABASE_URL is not None
    with scratch_database(normalize_database_url(TEST_DATABASE_URL), "blog_races") as url:
        alembic_upgrade(url)
        yield url


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    """A throw-away redis-server for the module (conftest's `private_redis`, module-scoped)."""
    with PrivateRedis(
        redis_server_binary(), free_port(), tmp_path_factory.mktemp("redis")
    ) as server:
        yield server


@pytest.fixture(scope="module")
def workers(
    redis_server: PrivateRedis, database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcesses]:
    """`uvicorn main:app --workers 2` on the module's database and Redis, rate limits off."""
    env = {"DATABASE_URL": database, "REDIS_URL": redis_server.url, "RATE_LIMIT_ENABLED": "false"}
    log = tmp_path_factory.mktemp("workers") / "uvicorn.log"
    with WorkerProcesses(env, log, workers=2) as server:
        assert len(server.worker_pids()) == 2
        yield server


@pytest.fixture(scope="module")
def authors(workers: WorkerProcesses) -> list[dict[str, str]]:
    """Authorization headers of two signed-in users, alice and bob."""
    headers = []
    with httpx.Client(base_url=workers.url, timeout=TIMEOUT) as http:
        for name in ("alice", "bob"):
            user = {"username": name, "email": f"{name}@example.com", "password": PASSWORD}
            registered = http.post("/auth/register", json=user)
            assert registered.status_code == 201, registered.text
            token = http.post("/auth/login", data={"username": name, "password": PASSWORD})
            assert token.status_code == 200, token.text
            headers.append({"Authorization": f"Bearer {token.json()['access_token']}"})
    return headers


def client_port(response: httpx.Response) -> int:
    """The local port of the connection the response came back on."""
    port: int = response.extensions["network_stream"].get_extra_info("client_addr")[1]
    return port


@dataclass
class Line:
    """A client with one warm keep-alive connection, and the worker holding its server end."""

    client: httpx.AsyncClient
    port: int
    worker: int


@asynccontextmanager
async def lines_to_both_workers(workers: WorkerProcesses, count: int) -> AsyncIterator[list[Line]]:
    """`count` warm lines, split between the two workers as evenly as the kernel allows."""
    pids = workers.worker_pids()
    clients: list[httpx.AsyncClient] = []
    ports: list[int] = []
    try:
        while True:
            for _ in range(count):
                # One after another: connections opened all at once crowd onto one worker.
                clients.append(
                    httpx.AsyncClient(base_url=workers.url, timeout=TIMEOUT, verify=SSL_CONTEXT)
                )
                response = await clients[-1].get("/")
                assert response.status_code == 200, response.text
                ports.append(client_port(response))
            owners = workers.connection_pids()
            by_worker = {
                pid: [
                    Line(client, port, pid)
                    for client, port in zip(clients, ports, strict=True)
                    if owners.get(port) == pid
                ]
                for pid in pids
            }
            if min(map(len, by_worker.values())) >= count // 2 or len(clients) >= 8 * count:
                break
            await asyncio.sleep(0.05)  # on a busy machine one worker can win many accepts in a row
        interleaved = itertools.chain.from_iterable(itertools.zip_longest(*by_worker.values()))
        lines = [line for line in interleaved if line is not None][:count]
        shares = Counter(line.worker for line in lines)
        assert len(lines) == count and min(shares[pid] for pid in pids) >= count // 4, shares
        for client in set(clients) - {line.client for line in lines}:
            await client.aclose()
        clients = [line.client for line in lines]
        assert workers.pids_holding_connections() == pids
        yield lines
    finally:
        for client in clients:
            await client.aclose()


async def fire(lines: list[Line], requests: list[httpx.Request]) -> list[httpx.Response]:
    """Send each request on its line, all released at once; each must use its warm connection."""
    go = asyncio.Event()

    async def send(line: Line, request: httpx.Request) -> httpx.Response:
        await go.wait()
        return await line.client.send(request)

    tasks = [
        asyncio.create_task(send(line, request))
        for line, request in zip(lines, requests, strict=True)
    ]
    await asyncio.sleep(0)  # every task is now waiting on the event
    go.set()
    responses = await asyncio.gather(*tasks)
    for line, response in zip(lines, responses, strict=True):
        assert client_port(response) == line.port, "sent on a new connection, to either worker"
    return responses


def show(
    workers: WorkerProcesses, lines: list[Line], responses: list[httpx.Response], log_from: int
) -> None:
    """Print who answered what and the server log of the race (pytest shows it on failure)."""
    for line, response in zip(lines, responses, strict=True):
        replayed = " (replayed)" if "idempotent-replayed" in response.headers else ""
        print(f"worker {line.worker}: {response.status_code}{replayed} {response.text[:200]}")
    print(workers.log_text()[log_from:][:20_000])


def request_id(tag: str, number: int) -> dict[str, str]:
    """An X-Request-ID header that finds the request in the server log."""
    return {"X-Request-ID": f"{tag}-{number}"}


async def test_sixteen_creates_of_one_title_make_one_post(
    workers: WorkerProcesses, authors: list[dict[str, str]], database: str
) -> None:
    async with lines_to_both_workers(workers, 16) as lines:
        requests = [
            line.client.build_request(
                "POST",
                "/posts",
                json={
                    "title": "Race condition" if number % 3 else "  race CONDITION ",
                    "content": f"attempt {number}",
                },
                headers={**authors[number % 2], **request_id("create", number)},
            )
            for number, line in enumerate(lines)
        ]
        log_from = len(workers.log_text())
        responses = await fire(lines, requests)
    show(workers, lines, responses, log_from)

    assert Counter(response.status_code for response in responses) == {201: 1, 409: 15}
    for response in responses:
        if response.status_code == 409:
            assert_error(response, 409, "POST_TITLE_EXISTS")
    (winner,) = (response.json() for response in responses if response.status_code == 201)
    stored = await fetch(
        database, "SELECT id, title, content FROM posts WHERE lower(title) = 'race condition'"
    )
    assert stored == [{key: winner[key] for key in ("id", "title", "content")}]


async def test_twelve_if_match_writers_one_wins(
    workers: WorkerProcesses, authors: list[dict[str, str]], database: str
) -> None:
    alice = authors[0]
    async with httpx.AsyncClient(base_url=workers.url, timeout=TIMEOUT) as http:
        created = await http.post(
            "/posts", json={"title": "Contended", "content": "original"}, headers=alice
        )
        assert created.status_code == 201, created.text
        post_id = created.json()["id"]
        etag = (await http.get(f"/posts/{post_id}")).headers["etag"]
    (before,) = await fetch(database, "SELECT version FROM posts WHERE id = $1", post_id)

    async with lines_to_both_workers(workers, 12) as lines:
        requests = [
            line.client.build_request(
                "PATCH",
                f"/posts/{post_id}",
                json={"title": f"Contended by writer {number}", "content": f"writer {number}"},
                headers={**alice, "If-Match": etag, **request_id("if-match", number)},
            )
            for number, line in enumerate(lines)
        ]
        log_from = len(workers.log_text())
        responses = await fire(lines, requests)
        show(workers, lines, responses, log_from)

        assert Counter(response.status_code for response in responses) == {200: 1, 412: 11}
        for response in responses:
            if response.status_code == 412:
                assert_error(response, 412, "PRECONDITION_FAILED")
        (winner,) = (response for response in responses if response.status_code == 200)
        assert winner.headers["etag"] != etag
        # Every worker now reads the winner's post (no stale cache anywhere).
        for line in lines:
            read = await line.client.get(f"/posts/{post_id}")
            assert (read.json(), read.headers["etag"]) == (winner.json(), winner.headers["etag"])

    stored = await fetch(
        database, "SELECT title, content, version FROM posts WHERE id = $1", post_id
    )
    changed = {"title": winner.json()["title"], "content": winner.json()["content"]}
    assert stored == [{**changed, "version": before["version"] + 1}], "one write, the winner's"


async def test_eight_duplicates_of_one_idempotent_create_write_once(
    workers: WorkerProcesses, authors: list[dict[str, str]], database: str
) -> None:
    body = {"title": "Stampede", "content": "only once"}
    keyed = {**authors[1], "Idempotency-Key": "stampede"}
    async with lines_to_both_workers(workers, 8) as lines:
        requests = [
            line.client.build_request(
                "POST", "/posts", json=body, headers={**keyed, **request_id("idempotent", number)}
            )
            for number, line in enumerate(lines)
        ]
        log_from = len(workers.log_text())
        responses = await fire(lines, requests)
        show(workers, lines, responses, log_from)

        original = assert_one_write(responses)
        # Once all have finished, a retry replays the 201 on either worker.
        for line in {line.worker: line for line in lines}.values():
            assert_replay(await line.client.post("/posts", json=body, headers=keyed), original)

    stored = await fetch(database, "SELECT id FROM posts WHERE title = 'Stampede'")
    assert stored == [{"id": original.json()["id"]}]
    records = await fetch(
        database, "SELECT status_code, location FROM idempotency_keys WHERE key = 'stampede'"
    )
    assert records == [{"status_code": 201, "location": original.headers["location"]}]
