"""Shared fixtures: every HTTP test runs on the embedded default and, when the services are
configured (TEST_DATABASE_URL, TEST_REDIS_URL), on PostgreSQL + Redis ("scaled")."""

from __future__ import annotations

import concurrent.futures
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic.config import Config as AlembicConfig
from fastapi import FastAPI
from private_services import PrivatePostgres, PrivateRedis, postgres_bindir
from sqlalchemy import text

from alembic import command
from config import Settings, normalize_database_url
from main import create_app

ROOT = Path(__file__).resolve().parent.parent
TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL")
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL")
REQUIRE_SERVICES = os.environ.get("TEST_REQUIRE_SERVICES") == "1"
TEST_SECRET = "test-secret-key-that-is-long-enough-0123456789"
PASSWORD = "password123"


@pytest.fixture(autouse=True, scope="session")
def cheap_password_hashing() -> Iterator[None]:
    """Argon2 at its production cost takes a large share of a second per hash; tests of
    behaviour use the same algorithm with minimal cost (subprocess servers keep the real one)."""
    from pwdlib import PasswordHash
    from pwdlib.hashers.argon2 import Argon2Hasher

    import security

    original = security.password_hasher, security.DUMMY_PASSWORD_HASH
    security.password_hasher = PasswordHash(
        (Argon2Hasher(time_cost=1, memory_cost=1024, parallelism=1),)
    )
    security.DUMMY_PASSWORD_HASH = security.password_hasher.hash("dummy-password-for-tests")
    yield
    security.password_hasher, security.DUMMY_PASSWORD_HASH = original


def services_missing(*names: str) -> str | None:
    """Why a test needing these services cannot run, or None when it can."""
    missing = [
        name
        for name, value in (
            ("TEST_DATABASE_URL", TEST_DATABASE_URL),
            ("TEST_REDIS_URL", TEST_REDIS_URL),
        )
        if name in names and not value
    ]
    return f"{', '.join(missing)} not set" if missing else None


def need_services(*names: str) -> None:
    """Skip (or, with TEST_REQUIRE_SERVICES=1, fail) when a service is not configured."""
    reason = services_missing(*names)
    if reason:
        if REQUIRE_SERVICES:
            pytest.fail(f"TEST_REQUIRE_SERVICES=1 but {reason}")
        pytest.skip(reason)


def in_own_thread(function: Any, *args: Any) -> Any:
    """Run blocking set-up that calls asyncio.run() away from the test's event loop."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(function, *args).result()


def alembic_upgrade(database_url: str) -> None:
    in_own_thread(_alembic_upgrade, database_url)


def _alembic_upgrade(database_url: str) -> None:
    config = AlembicConfig(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "alembic"))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logger"] = False
    command.upgrade(config, "head")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test."""
    path = tmp_path_factory.mktemp("template") / "blog.db"
    alembic_upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The scratch PostgreSQL database, migrated from empty once per session."""
    need_services("TEST_DATABASE_URL")
    assert TEST_DATABASE_URL is not None
    url = normalize_database_url(TEST_DATABASE_URL)
    reset_postgres_schema(url)
    alembic_upgrade(url)
    return url


def reset_postgres_schema(url: str) -> None:
    import asyncio

    import asyncpg

    async def reset() -> None:
        connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            await connection.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        finally:
            await connection.close()

    in_own_thread(asyncio.run, reset())


async def truncate_postgres(url: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        tables = await connection.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename <> 'alembic_version'"
        )
        names = ", ".join(f'"{row["tablename"]}"' for row in tables)
        if names:
            await connection.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
    finally:
        await connection.close()


async def flush_redis(url: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


@pytest.fixture(params=["embedded", "scaled"])
def backend(request: pytest.FixtureRequest) -> str:
    """`embedded`: SQLite, in-process everything. `scaled`: PostgreSQL + Redis."""
    if request.param == "scaled":
        need_services("TEST_DATABASE_URL", "TEST_REDIS_URL")
    return str(request.param)


@pytest.fixture
async def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A clean, migrated database for this test."""
    if backend == "embedded":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "blog.db"
        shutil.copyfile(template, path)
        return f"sqlite+aiosqlite:///{path}"
    url: str = request.getfixturevalue("postgres_url")
    await truncate_postgres(url)
    return url


@pytest.fixture
async def redis_url(backend: str) -> str | None:
    """The test Redis (flushed) for the scaled backend; None for the embedded default."""
    if backend == "embedded":
        return None
    assert TEST_REDIS_URL is not None
    await flush_redis(TEST_REDIS_URL)
    return TEST_REDIS_URL


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Override in a test module (or with indirect parametrization) to change settings."""
    return {}


@pytest.fixture
def settings(
    database_url: str, redis_url: str | None, settings_overrides: dict[str, Any]
) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "redis_url": redis_url,
        "secret_key": TEST_SECRET,
        "environment": "test",
        "log_format": "text",
        "rate_limit_read": "100000/minute",
        "rate_limit_write": "100000/minute",
        "rate_limit_login": "100000/minute",
        "rate_limit_login_account": "100000/hour",
    }
    values.update(settings_overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


async def register(
    client: httpx.AsyncClient, username: str, password: str = PASSWORD, email: str | None = None
) -> dict[str, Any]:
    response = await client.post(
        "/auth/register",
        json={
            "username": username,
            "email": email or f"{username}@example.com",
            "password": password,
        },
    )
    assert response.status_code == 201, response.text
    user: dict[str, Any] = response.json()
    return user


async def login(
    client: httpx.AsyncClient, username: str, password: str = PASSWORD
) -> dict[str, str]:
    response = await client.post("/auth/login", data={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def make_admin(app: FastAPI, username: str) -> None:
    async with app.state.database.sessionmaker() as session:
        await session.execute(
            text("UPDATE users SET role = 'admin' WHERE lower(username) = :u"),
            {"u": username.lower()},
        )
        await session.commit()


@pytest.fixture
async def user_headers(client: httpx.AsyncClient) -> dict[str, str]:
    """A signed-in ordinary user, `alice`."""
    await register(client, "alice")
    return await login(client, "alice")


@pytest.fixture
async def other_headers(client: httpx.AsyncClient) -> dict[str, str]:
    """A second ordinary user, `bob`."""
    await register(client, "bob")
    return await login(client, "bob")


@pytest.fixture
async def admin_headers(client: httpx.AsyncClient, app: FastAPI) -> dict[str, str]:
    """A signed-in admin, `root_admin`."""
    await register(client, "root_admin")
    await make_admin(app, "root_admin")
    return await login(client, "root_admin")


async def create_post(
    client: httpx.AsyncClient, headers: dict[str, str], title: str, **fields: Any
) -> dict[str, Any]:
    body = {"title": title, "content": fields.pop("content", f"Content of {title}"), **fields}
    response = await client.post("/posts", json=body, headers=headers)
    assert response.status_code == 201, response.text
    post: dict[str, Any] = response.json()
    return post


@pytest.fixture(scope="session")
def root_dir() -> Iterator[Path]:
    yield ROOT


class LiveServer:
    """The app served by a real uvicorn server inside the test's event loop."""

    def __init__(self, app: FastAPI, port: int) -> None:
        self.app = app
        self.port = port
        self.http_url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def redis_server_binary() -> str:
    """The redis-server program; skip (or fail with TEST_REQUIRE_SERVICES=1) without it."""
    binary = shutil.which("redis-server")
    if binary is None:
        if REQUIRE_SERVICES:
            pytest.fail("TEST_REQUIRE_SERVICES=1 but redis-server is not installed")
        pytest.skip("redis-server is not installed")
    return binary


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A throw-away redis-server on a free port of its own (see tests/private_services.py)."""
    with PrivateRedis(redis_server_binary(), free_port(), tmp_path / "redis") as server:
        yield server


@pytest.fixture
def private_postgres_server() -> Iterator[PrivatePostgres]:
    """A throw-away PostgreSQL cluster on a free port of its own (see tests/private_services.py)."""
    bindir = postgres_bindir()
    if bindir is None:
        if REQUIRE_SERVICES:
            pytest.fail("TEST_REQUIRE_SERVICES=1 but PostgreSQL's initdb/pg_ctl are not installed")
        pytest.skip("PostgreSQL's initdb/pg_ctl are not installed")
    with PrivatePostgres(bindir, free_port()) as server:
        yield server


@pytest.fixture
async def live_server(settings: Settings) -> AsyncIterator[LiveServer]:
    """A real HTTP + WebSocket server (uvicorn, in this process) for the test's settings."""
    import asyncio

    import uvicorn

    application = create_app(settings)
    port = free_port()
    config = uvicorn.Config(
        application,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        ws="websockets-sansio",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started:
            break
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield LiveServer(application, port)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)
