"""Behind PgBouncer in transaction mode (DATABASE_POOLER=pgbouncer): a private PostgreSQL server
that logs every statement, a private PgBouncer with two server connections in front of it, and the
app with a pool of ten. Every part of the API works, concurrent requests share the two server
connections transaction by transaction, and nothing the app sends relies on a session outliving
its transaction (a session-level SET, LISTEN, a session advisory lock, a named prepared
statement)."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from conftest import (
    REQUIRE_SERVICES,
    TEST_SECRET,
    alembic_upgrade,
    free_port,
    login,
    register,
)
from fastapi import FastAPI
from loopback import PrivatePgBouncer, binary
from private_services import PrivatePostgres

from config import Settings, normalize_database_url
from main import create_app

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

SERVER_CONNECTIONS = 2

# What would break when the next transaction runs on another server connection. PgBouncer itself
# SETs the parameters it tracks per client (encoding, DateStyle, TimeZone, ...) on the server
# connection it hands over: those are its own, made for this.
PGBOUNCER_TRACKED = (
    "client_encoding|datestyle|timezone|standard_conforming_strings|application_name"
)
SESSION_STATE = re.compile(
    rf"^\s*(SET\s+(?!LOCAL\b|TRANSACTION\b|(?:{PGBOUNCER_TRACKED})\b)|RESET\b|LISTEN\b"
    r"|PREPARE\b|DECLARE\b.*\bWITH\s+HOLD\b|CREATE\s+TEMP)"
    r"|pg_(try_)?advisory_lock(_shared)?\s*\("
    r"|set_config\s*\([^)]*,\s*false\s*\)",
    re.I | re.S,
)


@pytest.fixture
def logged_postgres(private_postgres_server: PrivatePostgres) -> Iterator[PrivatePostgres]:
    """The private server, logging every statement and every named prepare."""

    async def log_everything() -> None:
        connection = await asyncpg.connect(private_postgres_server.url)
        try:
            await connection.execute("ALTER SYSTEM SET log_statement = 'all'")
            await connection.execute("SELECT pg_reload_conf()")
        finally:
            await connection.close()

    asyncio.run(log_everything())
    yield private_postgres_server


@pytest.fixture
def pgbouncer(logged_postgres: PrivatePostgres) -> Iterator[PrivatePgBouncer]:
    if binary("pgbouncer") is None:
        if REQUIRE_SERVICES:
            pytest.fail("TEST_REQUIRE_SERVICES=1 but pgbouncer is not installed")
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer)")
    with PrivatePgBouncer(logged_postgres.url, free_port(), SERVER_CONNECTIONS) as bouncer:
        yield bouncer


@pytest.fixture
def migrated(pgbouncer: PrivatePgBouncer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Migrations run through PgBouncer too (`manage.py migrate` with the same settings)."""
    monkeypatch.setenv("DATABASE_POOLER", "pgbouncer")
    alembic_upgrade(normalize_database_url(pgbouncer.url()))


@pytest.fixture
async def pooled_app(pgbouncer: PrivatePgBouncer, migrated: None) -> AsyncIterator[FastAPI]:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=pgbouncer.url(),
        database_pooler="pgbouncer",
        db_pool_size=10,
        secret_key=TEST_SECRET,
        environment="test",
        log_format="text",
        rate_limit_enabled=False,
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


async def test_the_api_works_through_pgbouncer_in_transaction_mode(
    pooled_app: FastAPI, logged_postgres: PrivatePostgres
) -> None:
    transport = httpx.ASGITransport(app=pooled_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        await register(client, "alice")
        headers = await login(client, "alice")
        statuses: Counter[int] = Counter()

        async def write_and_read(index: int) -> int:
            created = await client.post(
                "/posts",
                json={"title": f"Post {index}", "content": "words", "published": True},
                headers=headers,
            )
            statuses[created.status_code] += 1
            post_id: int = created.json()["id"]
            for path in (f"/posts/{post_id}", "/posts?limit=5", f"/posts/{post_id}/comments"):
                statuses[(await client.get(path)).status_code] += 1
            comment = await client.post(
                f"/posts/{post_id}/comments", json={"text": "first"}, headers=headers
            )
            statuses[comment.status_code] += 1
            return post_id

        # Ten at a time over two server connections: transactions of one pooled connection
        # land on either server connection.
        post_ids = await asyncio.gather(*(write_and_read(index) for index in range(30)))
        assert len(set(post_ids)) == 30
        assert set(statuses) == {200, 201}, statuses

        # The same Idempotency-Key ten times at once: one post, the others replay it (or are
        # told it is in progress), under the transaction-scoped advisory lock.
        replays = await asyncio.gather(
            *(
                client.post(
                    "/posts",
                    json={"title": "Once", "content": "only once"},
                    headers={**headers, "Idempotency-Key": "the-key"},
                )
                for _ in range(10)
            )
        )
        assert {response.status_code for response in replays} <= {201, 409}
        created_ids = {r.json()["id"] for r in replays if r.status_code == 201}
        assert len(created_ids) == 1
        again = await client.post(
            "/posts",
            json={"title": "Once", "content": "only once"},
            headers={**headers, "Idempotency-Key": "the-key"},
        )
        assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
        assert again.json()["id"] in created_ids

        # If-Match races: one winner.
        post = await client.get(f"/posts/{post_ids[0]}")
        etag = post.headers["ETag"]
        races = await asyncio.gather(
            *(
                client.patch(
                    f"/posts/{post_ids[0]}",
                    json={"title": f"Winner {index}"},
                    headers={**headers, "If-Match": etag},
                )
                for index in range(8)
            )
        )
        assert sorted(response.status_code for response in races) == [200] + [412] * 7
        assert (await client.delete(f"/posts/{post_ids[1]}", headers=headers)).status_code == 204
        assert (await client.get(f"/posts/{post_ids[1]}")).status_code == 404
        ready = await client.get("/health/ready")
        assert ready.status_code == 200, ready.text

    await assert_no_session_state(logged_postgres)


async def assert_no_session_state(server: PrivatePostgres) -> None:
    """The server saw only PgBouncer's two connections, no advisory lock is left, and no
    statement it ran keeps state beyond its transaction."""
    connection = await asyncpg.connect(server.url, statement_cache_size=0)  # no named statements
    try:
        backends = await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            server.DATABASE,
        )
        locks = await connection.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
        )
    finally:
        await connection.close()
    assert backends <= SERVER_CONNECTIONS
    assert locks == 0
    statements = logged_statements(server.log_file)
    assert any("pg_try_advisory_xact_lock" in statement for statement in statements)
    offending = [statement for statement in statements if SESSION_STATE.search(statement)]
    assert offending == [], sorted(set(offending))[:20]


def logged_statements(log_file: Path) -> list[str]:
    """The statements in the server's log (log_statement = all), one per entry."""
    entries = re.split(r"\n(?=\S)", log_file.read_text(errors="replace"))
    found = []
    for entry in entries:
        match = re.search(r"(?:statement|execute [^:]*): (.*)", entry, re.S)
        if match is not None:
            found.append(match.group(1))
    # asyncpg prepares by name only when its statement cache is on: never here.
    named = [entry for entry in entries if re.search(r"execute __asyncpg", entry)]
    assert named == []
    return found
