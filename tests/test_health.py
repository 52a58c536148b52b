"""Liveness and readiness: ready means the database answers with this version's schema; a Redis
outage leaves the service ready (degraded), as it keeps answering on its in-process fallbacks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from conftest import TEST_SECRET, create_post
from fastapi import FastAPI
from private_services import PrivateRedis
from sqlalchemy import text

from config import Settings
from database import Database
from main import create_app
from migrations import head_revision


async def test_liveness_and_its_alias(client: httpx.AsyncClient) -> None:
    for path in ("/", "/health/live"):
        response = await client.get(path)
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}


async def test_ready(client: httpx.AsyncClient, backend: str) -> None:
    response = await client.get("/health/ready")
    assert response.status_code == 200
    expected_cache = "redis" if backend == "scaled" else "in-process"
    assert response.json() == {"status": "ok", "database": "ok", "cache": expected_cache}


@pytest.mark.parametrize("settings_overrides", [{"cache_ttl_seconds": 0}])
async def test_ready_without_any_cache(client: httpx.AsyncClient, backend: str) -> None:
    body = (await client.get("/health/ready")).json()
    # Redis still carries rate limits and fan-out when configured, even without the post cache.
    assert body["cache"] == ("redis" if backend == "scaled" else "disabled")


async def set_revision(app: FastAPI, revision: str | None) -> None:
    async with app.state.database.sessionmaker() as session:
        await session.execute(text("DELETE FROM alembic_version"))
        if revision is not None:
            await session.execute(
                text("INSERT INTO alembic_version (version_num) VALUES (:r)"), {"r": revision}
            )
        await session.commit()


@pytest.mark.parametrize(
    ("revision", "fragment"),
    [
        ("0004", "the database schema is at revision 0004; this version needs"),
        (None, "the database has no schema yet"),
        ("ffff", "which this version does not know"),
    ],
)
async def test_not_ready_when_the_schema_is_not_this_versions(
    app: FastAPI, client: httpx.AsyncClient, revision: str | None, fragment: str
) -> None:
    try:
        await set_revision(app, revision)
        response = await client.get("/health/ready")
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "unavailable"
        assert body["database"] == "not migrated"
        assert body["error_code"] == "SERVICE_UNAVAILABLE"
        assert fragment in body["detail"]
        assert "python manage.py migrate" in body["detail"]
    finally:
        await set_revision(app, head_revision())  # the PostgreSQL schema is shared by tests
    assert (await client.get("/health/ready")).status_code == 200


async def test_not_ready_without_the_version_table(
    app: FastAPI, client: httpx.AsyncClient, backend: str
) -> None:
    if backend == "scaled":
        pytest.skip("the session's PostgreSQL schema is shared; the embedded file is not")
    async with app.state.database.sessionmaker() as session:
        await session.execute(text("DROP TABLE alembic_version"))
        await session.commit()
    body = (await client.get("/health/ready")).json()
    assert body["database"] == "not migrated"
    assert "the database has no schema yet" in body["detail"]


async def test_not_ready_when_the_database_is_unreachable(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    working = app.state.database
    unreachable = Database(
        Settings(  # type: ignore[call-arg]
            _env_file=None, database_url="postgresql://root@127.0.0.1:1/nowhere"
        )
    )
    app.state.database = unreachable
    try:
        response = await client.get("/health/ready")
    finally:
        app.state.database = working
        await unreachable.dispose()
    assert response.status_code == 503
    body = response.json()
    assert body["database"] == "error"
    assert body["status"] == "unavailable"
    assert body["error_code"] == "SERVICE_UNAVAILABLE"


@pytest.fixture
async def app_on_private_redis(
    database_url: str, private_redis: PrivateRedis
) -> AsyncIterator[tuple[FastAPI, PrivateRedis]]:
    values: dict[str, Any] = {
        "database_url": database_url,
        "redis_url": private_redis.url,
        "secret_key": TEST_SECRET,
        "environment": "test",
    }
    application = create_app(Settings(_env_file=None, **values))  # type: ignore[call-arg]
    async with application.router.lifespan_context(application):
        yield application, private_redis


@pytest.mark.parametrize("backend", ["embedded"])
async def test_a_redis_outage_is_degraded_but_ready(
    app_on_private_redis: tuple[FastAPI, PrivateRedis],
) -> None:
    application, redis = app_on_private_redis
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/health/ready")).json()["cache"] == "redis"
        redis.stop()
        response = await client.get("/health/ready")
        assert response.status_code == 200
        assert response.json() == {"status": "ok", "database": "ok", "cache": "degraded"}
        # ... and it does answer: reads and writes run on the in-process fallbacks.
        await client.post(
            "/auth/register",
            json={"username": "ann", "email": "ann@example.com", "password": "password123"},
        )
        token = await client.post(
            "/auth/login", data={"username": "ann", "password": "password123"}
        )
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        post = await create_post(client, headers, "During the outage")
        assert (await client.get(f"/posts/{post['id']}")).status_code == 200
        redis.start()
        assert (await client.get("/health/ready")).json()["cache"] == "redis"
