"""Start-up and the database schema: `uvicorn main:app` in a fresh directory migrates its own
SQLite file (once, even with two workers); a PostgreSQL database that is behind stops the start
with one line naming `python manage.py migrate`, unless MIGRATE_ON_START asks to migrate it (once,
under a lock, however many workers start)."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ROOT, TEST_DATABASE_URL, TEST_SECRET, in_own_thread, need_services
from private_services import scratch_database
from sqlalchemy.engine import make_url

from alembic import command
from config import Settings, normalize_database_url
from main import create_app
from migrations import alembic_config, head_revision

STARTUP_TIMEOUT = 90.0
SERVICE_VARIABLES = {name.upper() for name in Settings.model_fields}


def clean_env(**values: str) -> dict[str, str]:
    """The test's environment without any of the service's variables, plus `values`."""
    env = {key: value for key, value in os.environ.items() if key not in SERVICE_VARIABLES}
    env.update(LOG_FORMAT="text", **values)
    return env


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def uvicorn_command(port: int, *extra: str) -> list[str]:
    return [
        *(sys.executable, "-m", "uvicorn", "main:app", "--app-dir", str(ROOT)),
        *("--host", "127.0.0.1", "--port", str(port), *extra),
    ]


class Server:
    """A `uvicorn main:app` process group, waited for until `workers` have started."""

    def __init__(self, env: dict[str, str], cwd: Path, workers: int = 1) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = cwd / "server.log"
        extra = ("--workers", str(workers)) if workers > 1 else ()
        with self.log.open("wb") as output:
            self.process = subprocess.Popen(
                uvicorn_command(self.port, *extra),
                cwd=cwd,
                env=env,
                stdout=output,
                stderr=output,
                start_new_session=True,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while self.output().count("Application startup complete") < workers:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"uvicorn did not start:\n{self.output()}")
            time.sleep(0.1)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, 15)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
            self.process.wait(timeout=10)


def sqlite_revision(path: Path) -> list[str]:
    with sqlite3.connect(path) as connection:
        return [row[0] for row in connection.execute("SELECT version_num FROM alembic_version")]


# --- SQLite: the service migrates its own file -------------------------------------------------


@pytest.mark.slow
def test_uvicorn_main_app_in_a_fresh_directory_just_works(tmp_path: Path) -> None:
    """No DATABASE_URL, no .env, no `manage.py migrate`: two workers start on a new ./blog.db,
    one of them migrates it while the other waits, and the API answers."""
    server = Server(clean_env(), tmp_path, workers=2)
    try:
        ready = httpx.get(f"{server.url}/health/ready", timeout=10)
        assert ready.status_code == 200, ready.text
        assert ready.json()["database"] == "ok"
        registered = httpx.post(
            f"{server.url}/auth/register",
            json={"username": "fresh", "email": "fresh@example.com", "password": "password123"},
            timeout=30,
        )
        assert registered.status_code == 201, registered.text
    finally:
        server.stop()
    output = server.output()
    assert "Traceback" not in output
    assert output.count("Running upgrade  -> 0001") == 1, output
    assert sqlite_revision(tmp_path / "blog.db") == [head_revision()]


def _upgrade_to(url: str, revision: str) -> None:
    command.upgrade(alembic_config(url, configure_logger=False), revision)


def sqlite_settings(path: Path, **values: Any) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=f"sqlite+aiosqlite:///{path}",
        secret_key=TEST_SECRET,
        environment="test",
        **values,
    )


async def test_an_older_sqlite_file_is_brought_to_the_latest_schema(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    in_own_thread(_upgrade_to, f"sqlite+aiosqlite:///{path}", "0004")
    with sqlite3.connect(path) as connection:
        connection.execute(
            "INSERT INTO users (username, email, password_hash, role, created_at) "
            "VALUES ('kept', 'kept@example.com', 'x', 'user', '2026-01-01 00:00:00')"
        )
    application = create_app(sqlite_settings(path))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/health/ready")).status_code == 200
            assert (await client.get("/users/me")).status_code == 401  # the API answers
    assert sqlite_revision(path) == [head_revision()]
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT username FROM users").fetchall() == [("kept",)]


async def test_a_sqlite_file_from_a_newer_version_is_refused(
    tmp_path: Path, sqlite_template: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "newer.db"
    shutil.copyfile(sqlite_template, path)
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE alembic_version SET version_num = 'ffff'")
    application = create_app(sqlite_settings(path))
    with caplog.at_level(logging.CRITICAL), pytest.raises(SystemExit) as stopped:
        async with application.router.lifespan_context(application):
            pass
    assert stopped.value.code == 1
    assert "revision ffff, which this version does not know" in caplog.text
    assert sqlite_revision(path) == ["ffff"]  # untouched


# --- PostgreSQL: refused when behind, unless MIGRATE_ON_START ----------------------------------


@pytest.fixture
def empty_postgres() -> Iterator[str]:
    """An empty PostgreSQL database of this test's own (named after the test database)."""
    need_services("TEST_DATABASE_URL")
    assert TEST_DATABASE_URL is not None
    url = normalize_database_url(TEST_DATABASE_URL)
    with scratch_database(url, f"{make_url(url).database}_startup") as scratch:
        yield scratch


@pytest.mark.postgres
@pytest.mark.slow
def test_a_postgres_database_without_schema_refuses_to_start(
    empty_postgres: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        uvicorn_command(free_port()),
        env=clean_env(DATABASE_URL=empty_postgres, SECRET_KEY=TEST_SECRET),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output and "StartupRefused" not in output
    reasons = [line for line in output.splitlines() if "python manage.py migrate" in line]
    assert len(reasons) == 1, output
    assert "the database has no schema yet" in reasons[0]
    assert "Application startup complete" not in output


@pytest.mark.postgres
async def test_a_postgres_database_behind_refuses_to_start(
    empty_postgres: str, caplog: pytest.LogCaptureFixture
) -> None:
    in_own_thread(_upgrade_to, empty_postgres, "0004")
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, database_url=empty_postgres, secret_key=TEST_SECRET, environment="test"
    )
    application = create_app(settings)
    with caplog.at_level(logging.CRITICAL), pytest.raises(SystemExit):
        async with application.router.lifespan_context(application):
            pass
    assert (
        f"the database schema is at revision 0004; this version needs {head_revision()}: "
        "run `python manage.py migrate`"
    ) in caplog.text


@pytest.mark.postgres
@pytest.mark.slow
def test_migrate_on_start_migrates_postgres_once(empty_postgres: str, tmp_path: Path) -> None:
    """Two workers start on an empty database with MIGRATE_ON_START=true: one migrates under the
    advisory lock, the other finds the schema current; both serve."""
    env = clean_env(DATABASE_URL=empty_postgres, SECRET_KEY=TEST_SECRET, MIGRATE_ON_START="true")
    server = Server(env, tmp_path, workers=2)
    try:
        ready = httpx.get(f"{server.url}/health/ready", timeout=10)
        assert ready.status_code == 200, ready.text
        assert httpx.get(f"{server.url}/posts", timeout=10).json() == []
    finally:
        server.stop()
    output = server.output()
    assert "Traceback" not in output
    assert output.count("Running upgrade  -> 0001") == 1, output


# --- bad settings: one line, no traceback -------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"ENVIRONMENT": "production"}, "needs a SECRET_KEY of 32+ characters (it is unset)"),
        (
            {"DATABASE_URL": "foo://admin:hunter2@db/blog"},
            "DATABASE_URL='foo://admin:***@db/blog': must start with postgresql://",
        ),
        ({"LOG_LEVEL": "verbose"}, "LOG_LEVEL='verbose': must be one of CRITICAL, ERROR"),
        ({"RATE_LIMIT_READ": "lots"}, "RATE_LIMIT_READ='lots': must look like N/second"),
        ({"CACHE_TTL_SECONDS": "-1"}, "CACHE_TTL_SECONDS='-1': Input should be greater than"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL='localhost:6379': must start with redis://"),
    ],
)
def test_bad_settings_stop_the_server_with_one_line(
    env: dict[str, str], expected: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        uvicorn_command(free_port()),
        env=clean_env(**env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: invalid configuration: "), lines[0]
    assert expected in lines[0]
    assert "hunter2" not in result.stderr


def test_the_database_url_message_names_every_accepted_form() -> None:
    from pydantic import ValidationError

    from config import describe_invalid_settings

    with pytest.raises(ValidationError) as raised:
        Settings(_env_file=None, database_url="mysql://db/blog")  # type: ignore[call-arg]
    message = describe_invalid_settings(raised.value)
    for form in ("postgresql://", "postgres://", "postgresql+asyncpg://", "sqlite:///"):
        assert form in message
    assert "sqlite+aiosqlite:///" in message


def test_secrets_are_masked_in_messages() -> None:
    from pydantic import ValidationError

    from config import describe_invalid_settings

    with pytest.raises(ValidationError) as raised:
        Settings(  # type: ignore[call-arg]
            _env_file=None,
            secret_key=["not", "a", "string"],
            database_url="redis://u:topsecret@db/0",
        )
    message = describe_invalid_settings(raised.value)
    assert "SECRET_KEY=***" in message
    assert "topsecret" not in message and "not" not in message.split("SECRET_KEY=")[1][:10]
