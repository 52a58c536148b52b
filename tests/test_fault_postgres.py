"""Issue 6: PostgreSQL crashes and comes back while two worker processes take retried writes.

Set-up: a private PostgreSQL cluster of the test's own (initdb + pg_ctl on a free port, see
tests/private_services.py) served by `uvicorn main:app --workers 2` with REDIS_URL unset and rate
limiting off, so the database is the only state the workers share and the only thing that fails.
Writers create posts, each with a unique title and a unique Idempotency-Key, retrying the same
key and body on transport errors, 5xx and 409 IDEMPOTENCY_KEY_IN_USE until they get a 201.
Meanwhile PostgreSQL is stopped with `pg_ctl stop -m immediate` (a crash), kept down for 2 s and
started again on the same port and data directory; the service itself is never restarted.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from conftest import PASSWORD, alembic_upgrade
from private_services import PrivatePostgres
from worker_processes import WorkerProcesses

from config import normalize_database_url

WRITERS = 6
WRITES_BEFORE_CRASH_SECONDS = 1.5  # at least, and until some posts are acknowledged
ACKNOWLEDGED_BEFORE_CRASH = 10
FIRST_WRITES_LIMIT_SECONDS = 10.0
OUTAGE_SECONDS = 2.0
RECOVERY_LIMIT_SECONDS = 10.0
WRITES_AFTER_RECOVERY_SECONDS = 1.0
RETRY_DEADLINE_SECONDS = 25.0  # from the first write; a key without a 201 by then has failed
RETRY_PAUSE_SECONDS = 0.1
REQUEST_TIMEOUT_SECONDS = 10.0
REPLAY_CONCURRENCY = 8
# What a write may answer, short of 201, while the database is away.
CLEAN_OUTAGE_ANSWERS = {(503, "SERVICE_UNAVAILABLE"), (409, "IDEMPOTENCY_KEY_IN_USE")}

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


@dataclass
class Attempt:
    """One POST of a write: its answer (status None for a transport error) and when."""

    started: float
    finished: float
    status: int | None
    error_code: str | None
    text: str
    replayed: bool = False


@dataclass
class Write:
    """One post to create, under one Idempotency-Key, and every attempt at it."""

    key: str
    title: str
    post_id: int | None = None
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def body(self) -> dict[str, Any]:
        return {"title": self.title, "content": f"Written under key {self.key}"}

    def headers(self, auth: dict[str, str]) -> dict[str, str]:
        return {**auth, "Idempotency-Key": self.key}


@dataclass
class Outage:
    """When PostgreSQL was crashed and when it accepted connections again (monotonic seconds)."""

    crashed_at: float | None = None
    back_at: float | None = None


def retryable(status: int, error_code: str | None) -> bool:
    return status >= 500 or (status == 409 and error_code == "IDEMPOTENCY_KEY_IN_USE")


def error_code_of(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("error_code") if isinstance(body, dict) else None


async def post_until_created(
    http: httpx.AsyncClient, auth: dict[str, str], write: Write, deadline: float
) -> None:
    """POST the same key and body until a 201, a final refusal, or the deadline."""
    while True:
        started = time.monotonic()
        try:
            response = await http.post("/posts", json=write.body, headers=write.headers(auth))
        except httpx.TransportError as exc:
            write.attempts.append(Attempt(started, time.monotonic(), None, None, repr(exc)))
        else:
            error_code = error_code_of(response)
            replayed = response.headers.get("Idempotent-Replayed") == "true"
            write.attempts.append(
                Attempt(
                    started,
                    time.monotonic(),
                    response.status_code,
                    error_code,
                    response.text,
                    replayed,
                )
            )
            if response.status_code == 201:
                write.post_id = response.json()["id"]
                return
            if not retryable(response.status_code, error_code):
                return
        if time.monotonic() > deadline:
            return
        await asyncio.sleep(RETRY_PAUSE_SECONDS)


async def keep_writing(
    number: int,
    base_url: str,
    auth: dict[str, str],
    writes: list[Write],
    stop_new_writes: asyncio.Event,
    deadline: float,
) -> None:
    """Create posts one after another until told to stop; the last one still gets its retries."""
    # No keep-alive: every request is a new connection, so the kernel spreads them over both
    # workers instead of pinning this writer to one.
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(
        base_url=base_url, timeout=REQUEST_TIMEOUT_SECONDS, limits=limits
    ) as http:
        sequence = 0
        while not stop_new_writes.is_set() and time.monotonic() < deadline:
            write = Write(key=uuid.uuid4().hex, title=f"writer {number} post {sequence}")
            writes.append(write)
            await post_until_created(http, auth, write, deadline)
            sequence += 1


def first_created_after(writes: list[Write], moment: float) -> float | None:
    """When the first 201 arrived for an attempt sent at or after `moment`."""
    finishes = [
        attempt.finished
        for write in writes
        for attempt in write.attempts
        if attempt.status == 201 and attempt.started >= moment
    ]
    return min(finishes, default=None)


async def crash_and_restart(postgres: PrivatePostgres, writes: list[Write], outage: Outage) -> None:
    await asyncio.sleep(WRITES_BEFORE_CRASH_SECONDS)
    give_up_at = time.monotonic() + FIRST_WRITES_LIMIT_SECONDS
    while sum(1 for w in writes if w.post_id) < ACKNOWLEDGED_BEFORE_CRASH:
        assert time.monotonic() < give_up_at, "the writers are not getting through"
        await asyncio.sleep(0.05)
    outage.crashed_at = time.monotonic()
    await asyncio.to_thread(postgres.stop, "immediate")
    await asyncio.sleep(OUTAGE_SECONDS)
    await asyncio.to_thread(postgres.start)  # returns once it accepts connections
    outage.back_at = time.monotonic()


async def sign_up(base_url: str) -> dict[str, str]:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        user = {"username": "writer", "email": "writer@example.com", "password": PASSWORD}
        response = await http.post("/auth/register", json=user)
        assert response.status_code == 201, response.text
        response = await http.post("/auth/login", data={"username": "writer", "password": PASSWORD})
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def replay(base_url: str, auth: dict[str, str], writes: list[Write]) -> list[str]:
    """Send every acknowledged write again; the problems with the answers, if any."""
    problems: list[str] = []
    gate = asyncio.Semaphore(REPLAY_CONCURRENCY)

    async def replay_one(http: httpx.AsyncClient, write: Write) -> None:
        async with gate:
            response = await http.post("/posts", json=write.body, headers=write.headers(auth))
        if response.status_code != 201 or response.json().get("id") != write.post_id:
            problems.append(f"{write.title}: {response.status_code} {response.text}")
        elif response.headers.get("Idempotent-Replayed") != "true":
            problems.append(f"{write.title}: 201 without Idempotent-Replayed: true")

    async with httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT_SECONDS) as http:
        await asyncio.gather(*(replay_one(http, write) for write in writes))
    return problems


async def stored_posts(url: str) -> list[tuple[int, str]]:
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch("SELECT id, title FROM posts ORDER BY id")
    finally:
        await connection.close()
    return [(row["id"], row["title"]) for row in rows]


def first_traceback(log: str, lines: int = 40) -> str:
    """The first traceback in the server log (for failure messages), or a note that none is."""
    log_lines = log.splitlines()
    for index, line in enumerate(log_lines):
        if line.startswith("Traceback"):
            return "\n".join(log_lines[max(index - 1, 0) : index + lines])
    return "(no traceback in the server log)"


async def test_acknowledged_posts_survive_a_postgres_crash_exactly_once(
    private_postgres_server: PrivatePostgres, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="httpx")  # one line per request otherwise
    postgres = private_postgres_server
    alembic_upgrade(normalize_database_url(postgres.url))
    env = {
        "DATABASE_URL": postgres.url,
        "REDIS_URL": "",
        "RATE_LIMIT_ENABLED": "false",
        "NOTIFY_EMAIL": "",
        "SMTP_HOST": "",
    }
    with WorkerProcesses(env, tmp_path / "server.log", workers=2) as workers:
        pids_before = workers.worker_pids()
        assert len(pids_before) == 2, pids_before
        auth = await sign_up(workers.url)

        writes: list[Write] = []
        outage = Outage()
        stop_new_writes = asyncio.Event()
        deadline = time.monotonic() + RETRY_DEADLINE_SECONDS
        writers = [
            asyncio.create_task(
                keep_writing(number, workers.url, auth, writes, stop_new_writes, deadline)
            )
            for number in range(WRITERS)
        ]
        try:
            await crash_and_restart(postgres, writes, outage)
            assert outage.crashed_at is not None and outage.back_at is not None
            crashed_at, back_at = outage.crashed_at, outage.back_at
            recovered_at = None
            while time.monotonic() < back_at + RECOVERY_LIMIT_SECONDS + 1:
                recovered_at = first_created_after(writes, back_at)
                if recovered_at is not None:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(WRITES_AFTER_RECOVERY_SECONDS)
        finally:
            stop_new_writes.set()
            await asyncio.gather(*writers)

        replay_problems = await replay(workers.url, auth, [w for w in writes if w.post_id])
        pids_after = workers.worker_pids()
        supervisor_running = workers.process is not None and workers.process.poll() is None
        stored = await stored_posts(postgres.url)

    log = workers.log_text()
    attempts = [attempt for write in writes for attempt in write.attempts]
    failures = [attempt for attempt in attempts if attempt.status != 201]
    answers = Counter((attempt.status, attempt.error_code) for attempt in failures)
    acknowledged_before_crash = [
        write
        for write in writes
        if any(a.status == 201 and a.finished < crashed_at for a in write.attempts)
    ]
    # A 201 replayed to a retry: the first attempt's commit landed but its answer was lost.
    answered_by_replay = [w for w in writes if any(a.replayed for a in w.attempts)]
    recovery = None if recovered_at is None else recovered_at - back_at
    summary = (
        f"{len(writes)} writes, {len(attempts)} attempts, "
        f"{len(acknowledged_before_crash)} acknowledged before the crash, "
        f"{len(answered_by_replay)} acknowledged by a replay after a failed attempt; "
        f"non-201 answers (status, error_code): {dict(answers)}; "
        f"first 201 after PostgreSQL was back: "
        f"{'never' if recovery is None else f'{recovery:.2f} s'}"
    )
    print(summary)

    # The service process and its workers lived through it: nothing was restarted.
    assert supervisor_running, summary
    assert pids_after == pids_before, (pids_before, pids_after)

    assert acknowledged_before_crash, f"the crash must hit committed data: {summary}"
    unacknowledged = [(w.title, [a.status for a in w.attempts]) for w in writes if not w.post_id]
    assert not unacknowledged, f"keys that never got their 201: {unacknowledged[:5]}; {summary}"

    # Every acknowledged post is stored exactly once, under the id it was acknowledged with, and
    # nothing else was written (every key got its 201, so a stray row would be a second write).
    titles = Counter(title.lower() for _, title in stored)
    assert [title for title, count in titles.items() if count > 1] == [], summary
    assert sorted(stored) == sorted((w.post_id, w.title) for w in writes), summary
    assert replay_problems == [], replay_problems[:5]

    assert recovery is not None and recovery <= RECOVERY_LIMIT_SECONDS, summary

    # While the database is away the answer is a clean 503 (or 409 while a retry overlaps the
    # first attempt): never a 500, never a traceback, never a dropped connection.
    assert not any("Traceback" in attempt.text for attempt in failures), summary
    unclean = {
        answer: count for answer, count in answers.items() if answer not in CLEAN_OUTAGE_ANSWERS
    }
    assert not unclean, (
        f"unclean answers during the outage: {unclean}; {summary}\n"
        f"first server-side traceback:\n{first_traceback(log)}"
    )
