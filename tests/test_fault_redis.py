"""Issue 6: Redis stops and comes back under load while two worker processes serve traffic.

Set-up: `uvicorn main:app --workers 2` on a private PostgreSQL database and a private Redis of the
test's own (conftest's `private_redis`, killed outright and started again, empty, on the same
port). Readers fetch posts on fresh connections (so both workers serve them), one writer creates
posts, another updates one post and reads it back on a keep-alive connection to each worker, and
WebSocket clients on both workers watch a post. Redis is killed for a few seconds and started
again; the service itself is never restarted.

Readers are anonymous clients behind the trusted local proxy (FORWARDED_ALLOW_IPS=127.0.0.1), each
taking a fresh `X-Forwarded-For` address every few requests, so the load never meets the low read
limit that the shared-counter check needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import re
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from conftest import PASSWORD, alembic_upgrade
from private_services import PrivateRedis
from test_manage import private_postgres as private_postgres  # the fixture, shared
from websockets.asyncio.client import ClientConnection
from worker_processes import WorkerProcesses

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

READ_LIMIT = 20  # per minute; low, so the shared-counter check can exhaust it
READERS = 5
READ_PAUSE_SECONDS = 0.02
REQUESTS_PER_ADDRESS = 8  # a reader's fresh X-Forwarded-For, well under READ_LIMIT
SEEDED_POSTS = 12
LOAD_BEFORE_OUTAGE_SECONDS = 1.5
OUTAGE_SECONDS = 3.0
LOAD_AFTER_RECOVERY_SECONDS = 4.0
OUTAGE_COMMENTS_FOR_SECONDS = 2.0  # comments are sent this long into the outage, no longer
FANOUT_LIMIT_SECONDS = 10.0  # for fan-out to reach every socket, at start and after the outage
SHARED_LIMIT_ATTEMPTS = 2
# Which worker accepts a connection is the kernel's choice, and on a busy machine one worker can
# win many times in a row: connections are opened in rounds of alternating sizes, with a pause.
OPENING_ROUNDS = 24
OPENED_PER_ROUND = (4, 1)
OPENING_PAUSE_SECONDS = 0.05
REQUEST_TIMEOUT_SECONDS = 10.0
MIN_OUTAGE_READ_SUCCESS = 0.95
ID_IN_PATH = re.compile(r"/\d+")


@dataclass
class Call:
    """One HTTP request of the test and its answer (status None for a transport error)."""

    kind: str  # read, write or burst (reads deliberately over the limit)
    label: str
    started: float
    finished: float
    status: int | None
    rate_limit_headers: bool
    text: str


@dataclass
class Stale:
    """A read that answered an older revision than the write acknowledged before it."""

    started: float
    worker: int | None
    expected: str
    got: str
    x_cache: str | None

    def seen_from(self, moment: float) -> tuple[float, int | None, str, str, str | None]:
        """The read as reported: seconds after `moment`, worker, expected, got, X-Cache."""
        return round(self.started - moment, 2), self.worker, self.expected, self.got, self.x_cache


@dataclass
class Outage:
    """When Redis was killed and when it was started again (monotonic seconds)."""

    down_at: float = 0.0
    back_at: float = 0.0

    def covers(self, call: Call) -> bool:
        """Whether the request was sent while Redis was down."""
        return self.down_at <= call.started < self.back_at


@dataclass
class Watcher:
    """One WebSocket client on the watched post, the worker holding it and what it received."""

    socket: ClientConnection
    worker: int
    comments: Counter[int] = field(default_factory=Counter)

    async def listen(self) -> None:
        """Count every comment_created event by comment id until the socket closes."""
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.socket:
                event = json.loads(raw)
                if event.get("type") == "comment_created":
                    self.comments[event["comment"]["id"]] += 1


class Recorder:
    """Sends requests and keeps every answer, for the counts at the end."""

    def __init__(self) -> None:
        self.calls: list[Call] = []

    async def send(
        self, http: httpx.AsyncClient, kind: str, method: str, url: str, **kwargs: Any
    ) -> httpx.Response | None:
        """The response, or None after a transport error; recorded either way."""
        label = f"{method} {ID_IN_PATH.sub('/{id}', url)}"
        started = time.monotonic()
        try:
            response = await http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            self.calls.append(Call(kind, label, started, time.monotonic(), None, False, repr(exc)))
            return None
        limited = all(
            name in response.headers
            for name in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
        )
        call = Call(
            kind, label, started, time.monotonic(), response.status_code, limited, response.text
        )
        self.calls.append(call)
        return response


def fresh_client(base_url: str) -> httpx.AsyncClient:
    """No keep-alive: every request is a new connection, which either worker may accept."""
    limits = httpx.Limits(max_keepalive_connections=0)
    return httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT_SECONDS, limits=limits)


def worker_holding(port: int, client_port: int) -> int | None:
    """The pid of the server process holding the established connection from `client_port`."""
    output = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( sport = :{port} and dport = :{client_port} )"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    pids = {int(pid) for pid in re.findall(r"pid=(\d+)", output)}
    return pids.pop() if len(pids) == 1 else None


class PinnedConnection:
    """One keep-alive connection and the worker process that accepted it."""

    def __init__(self, workers: WorkerProcesses) -> None:
        self.port = workers.port
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        self.http = httpx.AsyncClient(
            base_url=workers.url, timeout=REQUEST_TIMEOUT_SECONDS, limits=limits
        )
        self.workers_by_port: dict[int, int | None] = {}

    def worker_of(self, response: httpx.Response) -> int | None:
        """Which worker answered; a connection the server dropped is replaced and looked up."""
        client_port: int = response.extensions["network_stream"].get_extra_info("client_addr")[1]
        if client_port not in self.workers_by_port:
            self.workers_by_port[client_port] = worker_holding(self.port, client_port)
        return self.workers_by_port[client_port]

    async def identify(self) -> int | None:
        """Open the connection and say which worker accepted it."""
        response = await self.http.get("/")  # liveness: never rate limited, touches nothing
        assert response.status_code == 200, response.text
        return self.worker_of(response)


@contextlib.asynccontextmanager
async def connections_to_each_worker(
    workers: WorkerProcesses,
) -> AsyncIterator[dict[int, PinnedConnection]]:
    """A keep-alive connection to every worker process, found by opening a few."""
    wanted = workers.worker_pids()
    pinned: dict[int, PinnedConnection] = {}
    opened: list[PinnedConnection] = []
    try:
        # Opened a few at a time: one by one, an idle server tends to hand them all to the
        # same worker.
        for round_number in range(OPENING_ROUNDS):
            size = OPENED_PER_ROUND[round_number % len(OPENED_PER_ROUND)]
            batch = [PinnedConnection(workers) for _ in range(size)]
            opened += batch
            for connection, worker in zip(
                batch, await asyncio.gather(*(c.identify() for c in batch)), strict=True
            ):
                if worker is not None and worker not in pinned:
                    pinned[worker] = connection
            if set(pinned) == wanted:
                break
            await asyncio.sleep(OPENING_PAUSE_SECONDS)
        assert set(pinned) == wanted, f"keep-alive connections reached only {set(pinned)}"
        for connection in opened:
            if connection not in pinned.values():
                await connection.http.aclose()
        yield pinned
    finally:
        for connection in opened:
            await connection.http.aclose()


@contextlib.asynccontextmanager
async def watchers_on_each_worker(
    workers: WorkerProcesses, post_id: int
) -> AsyncIterator[list[Watcher]]:
    """WebSocket clients on the post, opened until both worker processes hold some."""
    wanted = workers.worker_pids()
    url = f"{workers.ws_url}/ws/posts/{post_id}"
    async with contextlib.AsyncExitStack() as stack:
        watchers: list[Watcher] = []
        addresses = (f"10.77.{n // 250}.{n % 250 + 1}" for n in itertools.count())
        for round_number in range(OPENING_ROUNDS):
            size = OPENED_PER_ROUND[round_number % len(OPENED_PER_ROUND)]
            sockets = await asyncio.gather(
                *(
                    # Each from an address of its own (behind the trusted local proxy): a
                    # handshake spends a read, and the read limit here is low.
                    stack.enter_async_context(
                        websockets.connect(
                            url, additional_headers={"X-Forwarded-For": next(addresses)}
                        )
                    )
                    for _ in range(size)
                )
            )
            for socket in sockets:
                worker = worker_holding(workers.port, socket.local_address[1])
                assert worker in wanted, f"socket held by {worker}, workers are {wanted}"
                watchers.append(Watcher(socket, worker))
            if {watcher.worker for watcher in watchers} == wanted:
                break
            await asyncio.sleep(OPENING_PAUSE_SECONDS)
        assert {watcher.worker for watcher in watchers} == wanted, "sockets on one worker only"
        assert workers.pids_holding_connections() == wanted
        listeners = [asyncio.create_task(watcher.listen()) for watcher in watchers]
        try:
            yield watchers
        finally:
            for listener in listeners:
                listener.cancel()
            await asyncio.gather(*listeners, return_exceptions=True)


def reader_address(reader: int, sequence: int) -> str:
    """A client address of this reader's own, changed every REQUESTS_PER_ADDRESS requests."""
    batch = sequence // REQUESTS_PER_ADDRESS
    return f"10.{reader}.{batch // 250 % 250}.{batch % 250 + 1}"


async def read_load(
    reader: int, base_url: str, post_ids: list[int], recorder: Recorder, stop: asyncio.Event
) -> None:
    """Anonymous reads of single posts and of the list, on fresh connections, until told."""
    async with fresh_client(base_url) as http:
        for sequence in itertools.count():
            if stop.is_set():
                return
            url = "/posts" if sequence % 4 == 0 else f"/posts/{random.choice(post_ids)}"
            headers = {"X-Forwarded-For": reader_address(reader, sequence)}
            await recorder.send(http, "read", "GET", url, headers=headers)
            await asyncio.sleep(READ_PAUSE_SECONDS)


async def create_load(
    base_url: str, auth: dict[str, str], recorder: Recorder, stop: asyncio.Event
) -> None:
    """New posts, one after another, on fresh connections."""
    async with fresh_client(base_url) as http:
        for sequence in itertools.count():
            if stop.is_set():
                return
            body = {"title": f"load post {sequence}", "content": f"written under load {sequence}"}
            await recorder.send(http, "write", "POST", "/posts", json=body, headers=auth)
            await asyncio.sleep(0.1)


async def update_then_read(
    base_url: str,
    auth: dict[str, str],
    post_id: int,
    pinned: dict[int, PinnedConnection],
    recorder: Recorder,
    stale: list[Stale],
    reads_by_worker: Counter[int | None],
    stop: asyncio.Event,
) -> None:
    """Update the post (any worker), then read it back through each worker: never older."""
    async with fresh_client(base_url) as http:
        for revision in itertools.count(1):
            if stop.is_set():
                return
            content = f"revision {revision}"
            response = await recorder.send(
                http, "write", "PATCH", f"/posts/{post_id}", json={"content": content}, headers=auth
            )
            if response is None or response.status_code != 200:
                await asyncio.sleep(0.1)
                continue
            for connection in pinned.values():
                headers = {"X-Forwarded-For": reader_address(99, revision)}
                started = time.monotonic()
                read = await recorder.send(
                    connection.http, "read", "GET", f"/posts/{post_id}", headers=headers
                )
                if read is None or read.status_code != 200:
                    continue
                answered_by = connection.worker_of(read)
                reads_by_worker[answered_by] += 1
                if read.json()["content"] != content:
                    got = read.json()["content"]
                    stale.append(
                        Stale(started, answered_by, content, got, read.headers.get("X-Cache"))
                    )
            await asyncio.sleep(0.05)


async def comment(
    http: httpx.AsyncClient, recorder: Recorder, auth: dict[str, str], post_id: int, text: str
) -> int | None:
    """Comment on the post; the new comment's id, or None when it was refused."""
    response = await recorder.send(
        http, "write", "POST", f"/posts/{post_id}/comments", json={"text": text}, headers=auth
    )
    if response is None or response.status_code != 201:
        return None
    comment_id: int = response.json()["id"]
    return comment_id


async def reached_everyone(watchers: list[Watcher], comment_id: int, seconds: float) -> bool:
    """Wait (at most `seconds`) until every socket has received the comment."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if all(watcher.comments[comment_id] for watcher in watchers):
            return True
        await asyncio.sleep(0.05)
    return all(watcher.comments[comment_id] for watcher in watchers)


def receivers(watchers: list[Watcher], comment_id: int) -> list[int]:
    """The worker of every socket that received the comment, once per delivery."""
    return sorted(
        watcher.worker for watcher in watchers for _ in range(watcher.comments[comment_id])
    )


def sockets_per_worker(watchers: list[Watcher]) -> Counter[int]:
    """How many of the sockets each worker holds."""
    return Counter(watcher.worker for watcher in watchers)


async def fan_out_until_shared(
    base_url: str,
    auth: dict[str, str],
    post_id: int,
    watchers: list[Watcher],
    recorder: Recorder,
    limit: float,
) -> tuple[float | None, list[int]]:
    """Comment until one reaches every socket (within `limit`), then three more; their ids."""
    deadline = time.monotonic() + limit
    sent: list[int] = []
    async with fresh_client(base_url) as http:
        while time.monotonic() < deadline:
            comment_id = await comment(http, recorder, auth, post_id, f"probe {len(sent)}")
            if comment_id is None:
                await asyncio.sleep(0.2)
                continue
            sent.append(comment_id)
            if await reached_everyone(watchers, comment_id, 1.5):
                break
        else:
            return None, sent
        shared_at = time.monotonic()
        confirmed = []
        for number in range(3):
            comment_id = await comment(http, recorder, auth, post_id, f"confirm {number}")
            assert comment_id is not None, "a comment after recovery was refused"
            await reached_everyone(watchers, comment_id, 3.0)
            confirmed.append(comment_id)
    return shared_at, confirmed


async def comments_during_outage(
    base_url: str,
    auth: dict[str, str],
    post_id: int,
    recorder: Recorder,
    until: float,
) -> list[int]:
    """Comments sent while Redis is down, a few tenths of a second apart."""
    sent: list[int] = []
    async with fresh_client(base_url) as http:
        while time.monotonic() < until:
            comment_id = await comment(http, recorder, auth, post_id, f"outage {len(sent)}")
            if comment_id is not None:
                sent.append(comment_id)
            await asyncio.sleep(0.3)
    return sent


async def burst_during_outage(
    base_url: str, post_id: int, recorder: Recorder, count: int
) -> list[Call]:
    """Reads from one client, well over its limit, while Redis is down."""
    headers = {"X-Forwarded-For": "198.51.100.7"}
    first = len(recorder.calls)
    async with fresh_client(base_url) as http:
        for _ in range(count):
            await recorder.send(http, "burst", "GET", f"/posts/{post_id}", headers=headers)
    return [call for call in recorder.calls[first:] if call.kind == "burst"]


async def shared_counter_check(
    pinned: dict[int, PinnedConnection], auth: dict[str, str], post_id: int
) -> list[tuple[int | None, int, str | None]]:
    """(worker, status, X-RateLimit-Remaining) of READ_LIMIT + 3 reads alternating workers."""
    connections = list(pinned.values())
    answers = []
    for index in range(READ_LIMIT + 3):
        connection = connections[index % len(connections)]
        response = await connection.http.get(f"/posts/{post_id}", headers=auth)
        answers.append(
            (
                connection.worker_of(response),
                response.status_code,
                response.headers.get("X-RateLimit-Remaining"),
            )
        )
    return answers


def shared_counter_holds(answers: list[tuple[int | None, int, str | None]]) -> bool:
    """Exactly the limit admitted and one counter: Remaining goes limit-1 .. 0 across workers."""
    statuses = [status for _, status, _ in answers]
    remaining = [int(value or -1) for _, status, value in answers if status == 200]
    return statuses == [200] * READ_LIMIT + [429] * 3 and remaining == list(
        range(READ_LIMIT - 1, -1, -1)
    )


async def sign_up(base_url: str, username: str) -> dict[str, str]:
    """Register and log in; the Authorization header."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        user = {"username": username, "email": f"{username}@example.com", "password": PASSWORD}
        response = await http.post("/auth/register", json=user)
        assert response.status_code == 201, response.text
        response = await http.post("/auth/login", data={"username": username, "password": PASSWORD})
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def seed_posts(base_url: str, auth: dict[str, str], count: int) -> list[int]:
    """Published posts to read; their ids."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        ids = []
        for number in range(count):
            body = {"title": f"seeded {number}", "content": f"seeded content {number}"}
            response = await http.post("/posts", json=body, headers=auth)
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])
        return ids


def log_excerpt(log: str, lines: int = 30) -> str:
    """The first traceback of the server log, else its Redis-related lines."""
    log_lines = log.splitlines()
    for index, line in enumerate(log_lines):
        if line.startswith("Traceback"):
            return "\n".join(log_lines[max(index - 1, 0) : index + lines])
    redis_lines = [line for line in log_lines if "redis" in line.lower()]
    return "\n".join(redis_lines[:lines]) or "(nothing about Redis in the server log)"


async def test_redis_outage_under_load_falls_back_and_returns_to_shared_mode(
    private_postgres: str, private_redis: PrivateRedis, tmp_path: Path
) -> None:
    """Reads and writes succeed through the outage; rate limits and fan-out come back shared."""
    alembic_upgrade(private_postgres)
    env = {
        "DATABASE_URL": private_postgres,
        "REDIS_URL": private_redis.url,
        "RATE_LIMIT_ENABLED": "true",
        "RATE_LIMIT_READ": f"{READ_LIMIT}/minute",
        "RATE_LIMIT_WRITE": "100000/minute",
        "RATE_LIMIT_LOGIN": "100000/minute",
        "FORWARDED_ALLOW_IPS": "127.0.0.1",
        "NOTIFY_EMAIL": "",
        "SMTP_HOST": "",
    }
    with WorkerProcesses(env, tmp_path / "server.log", workers=2) as workers:
        base_url = workers.url
        checker_names = [f"checker{n}" for n in range(SHARED_LIMIT_ATTEMPTS)]
        writer, commenter, *checkers = await asyncio.gather(
            *(sign_up(base_url, name) for name in ["writer", "commenter", *checker_names])
        )
        post_ids = await seed_posts(base_url, writer, SEEDED_POSTS)
        updated_post, watched_post = post_ids[0], post_ids[1]

        recorder = Recorder()
        stale: list[Stale] = []
        reads_by_worker: Counter[int | None] = Counter()
        outage = Outage()
        async with (
            connections_to_each_worker(workers) as pinned,
            watchers_on_each_worker(workers, watched_post) as watchers,
        ):
            # Before the outage, fan-out is shared (this also waits for both subscriptions).
            before_at, before = await fan_out_until_shared(
                base_url, commenter, watched_post, watchers, recorder, FANOUT_LIMIT_SECONDS
            )
            assert before_at is not None, "fan-out never reached every socket before the outage"

            stop = asyncio.Event()
            recovery: asyncio.Task[tuple[float | None, list[int]]] | None = None
            load = [
                asyncio.create_task(read_load(n, base_url, post_ids, recorder, stop))
                for n in range(READERS)
            ]
            load.append(asyncio.create_task(create_load(base_url, writer, recorder, stop)))
            load.append(
                asyncio.create_task(
                    update_then_read(
                        base_url,
                        writer,
                        updated_post,
                        pinned,
                        recorder,
                        stale,
                        reads_by_worker,
                        stop,
                    )
                )
            )
            try:
                await asyncio.sleep(LOAD_BEFORE_OUTAGE_SECONDS)
                await asyncio.to_thread(private_redis.stop)
                outage.down_at = time.monotonic()
                outage_comments, burst = await asyncio.gather(
                    comments_during_outage(
                        base_url,
                        commenter,
                        watched_post,
                        recorder,
                        outage.down_at + OUTAGE_COMMENTS_FOR_SECONDS,
                    ),
                    burst_during_outage(base_url, post_ids[2], recorder, 2 * READ_LIMIT + 5),
                )
                await asyncio.sleep(max(0.0, outage.down_at + OUTAGE_SECONDS - time.monotonic()))
                outage.back_at = time.monotonic()
                await asyncio.to_thread(private_redis.start)
                recovery = asyncio.create_task(
                    fan_out_until_shared(
                        base_url,
                        commenter,
                        watched_post,
                        watchers,
                        recorder,
                        FANOUT_LIMIT_SECONDS,
                    )
                )
                await asyncio.sleep(LOAD_AFTER_RECOVERY_SECONDS)
            except BaseException:
                if recovery is not None:
                    recovery.cancel()
                raise
            finally:
                stop.set()
                await asyncio.gather(*load)
            assert recovery is not None
            shared_at, after = await recovery
            await asyncio.sleep(0.5)  # a duplicate delivery would arrive by now

        # New keep-alive connections: the load's may have been closed as idle meanwhile.
        shared_checks = []
        async with connections_to_each_worker(workers) as pinned:
            for checker in checkers:
                answers = await shared_counter_check(pinned, checker, post_ids[3])
                shared_checks.append(answers)
                if shared_counter_holds(answers):
                    break
                await asyncio.sleep(2.0)
        log = workers.log_text()

    reads = [call for call in recorder.calls if call.kind == "read"]
    writes = [call for call in recorder.calls if call.kind == "write"]
    outage_reads = [call for call in reads if outage.covers(call)]
    outage_ok = [call for call in outage_reads if call.status == 200]
    ratio = len(outage_ok) / len(outage_reads) if outage_reads else 0.0
    outage_writes = [call for call in writes if outage.covers(call)]
    server_errors = [call for call in recorder.calls if call.status is None or call.status >= 500]
    per_worker = sockets_per_worker(watchers)
    outage_delivery = {
        comment_id: receivers(watchers, comment_id) for comment_id in outage_comments
    }
    recovered_in = None if shared_at is None else shared_at - outage.back_at
    summary = (
        f"{len(reads)} reads, {len(writes)} writes; statuses by kind: "
        f"{dict(Counter((call.kind, call.label, call.status) for call in recorder.calls))}; "
        f"reads during the outage: {len(outage_ok)}/{len(outage_reads)} = {ratio:.3f}; "
        f"writes during the outage: {Counter(call.status for call in outage_writes)}; "
        f"burst during the outage: {Counter(call.status for call in burst)}; "
        f"stale reads (seconds after the restart, worker, expected, got, X-Cache): "
        f"{[read.seen_from(outage.back_at) for read in stale]}; "
        f"read-backs by worker: {dict(reads_by_worker)}; "
        f"outages logged: {log.count('redis unreachable')}; "
        f"sockets per worker: {dict(per_worker)}; outage comments reached: {outage_delivery}; "
        f"fan-out shared again after "
        f"{'never' if recovered_in is None else f'{recovered_in:.2f} s'}; "
        f"shared-counter checks (worker, status, remaining): {shared_checks}"
    )
    print(summary)

    # 1. Reads and writes keep succeeding; nothing ever answers 5xx or drops the connection.
    assert not server_errors, (
        f"5xx or transport errors: {[(c.label, c.status, c.text[:200]) for c in server_errors][:5]}"
        f"; {summary}\nserver log:\n{log_excerpt(log)}"
    )
    assert len(outage_reads) >= 50, f"too little load during the outage: {summary}"
    assert ratio >= MIN_OUTAGE_READ_SUCCESS, f"{summary}\nserver log:\n{log_excerpt(log)}"
    assert outage_writes and all(call.status in (200, 201) for call in outage_writes), (
        f"writes during the outage: {summary}"
    )
    assert not stale, f"a read after an acknowledged write was stale: {summary}\n{log_excerpt(log)}"
    assert set(reads_by_worker) == set(per_worker), f"read-backs on one worker only: {summary}"

    # 2. Rate limits: in-process during the outage (headers on every answer, each worker
    # enforcing the limit on its own), one shared counter again once Redis is back.
    assert all(call.rate_limit_headers for call in outage_reads + burst), summary
    assert all(outage.covers(call) for call in burst), f"the burst outlasted the outage: {summary}"
    admitted = sum(call.status == 200 for call in burst)
    assert READ_LIMIT <= admitted <= 2 * READ_LIMIT, f"burst admitted {admitted}: {summary}"
    assert admitted + sum(call.status == 429 for call in burst) == len(burst), summary
    assert shared_counter_holds(shared_checks[-1]), (
        f"rate limits did not return to one shared counter: {shared_checks}\n"
        f"server log:\n{log_excerpt(log)}"
    )
    assert {worker for worker, _, _ in shared_checks[-1]} == set(per_worker), shared_checks

    # 3. Fan-out: during the outage an event reaches exactly the sockets of the worker that
    # handled the write, once; after it, every socket on both workers gets every event once.
    assert outage_comments, f"no comment was acknowledged during the outage: {summary}"
    for comment_id, reached in outage_delivery.items():
        handler = reached[0] if reached else 0
        assert reached and reached == [handler] * per_worker[handler], (
            f"outage comment {comment_id} must reach every socket of one worker once: {summary}"
        )
    assert recovered_in is not None and recovered_in <= FANOUT_LIMIT_SECONDS, (
        f"fan-out did not return to shared mode: {summary}\nserver log:\n{log_excerpt(log)}"
    )
    for comment_id in [*before, *after]:
        assert all(watcher.comments[comment_id] == 1 for watcher in watchers), (
            f"comment {comment_id} not delivered exactly once to every socket: "
            f"{receivers(watchers, comment_id)}; {summary}"
        )
