"""`python manage.py`, run as the operator runs it: a subprocess against a SQLite file migrated by
`manage.py migrate` (and a private PostgreSQL database when TEST_DATABASE_URL is set)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ROOT, TEST_DATABASE_URL, TEST_SECRET, in_own_thread, login, need_services
from private_services import scratch_database

import models
from config import Settings, normalize_database_url

UNREACHABLE_URL = "postgresql://root@127.0.0.1:1/x"
HAS_COMMENTS = getattr(models, "Comment", None) is not None
# Variables of the service that the developer's environment must not leak into the commands.
SERVICE_VARIABLES = {name.upper() for name in Settings.model_fields} | {
    "PORT",
    "HOST",
    "PROMETHEUS_MULTIPROC_DIR",
}


def command_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in SERVICE_VARIABLES}
    env.update(DATABASE_URL=database_url, SECRET_KEY=TEST_SECRET, LOG_FORMAT="text")
    env.update(extra)
    return env


def manage(
    database_url: str,
    *args: str,
    stdin: str | None = None,
    cwd: Path | None = None,
    timeout: float = 180,
) -> subprocess.CompletedProcess[str]:
    """Run manage.py; cwd defaults to a directory without a `.env`, so only `env` counts."""
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        env=command_env(database_url),
        cwd=cwd or Path(__file__).resolve().parent,
        timeout=timeout,
    )


def assert_one_error_line(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("error: "), line
    for fragment in fragments:
        assert fragment in line, line
    return line


# --- databases -------------------------------------------------------------------------------


def migrated_sqlite(directory: Path) -> str:
    url = f"sqlite+aiosqlite:///{directory / 'blog.db'}"
    result = manage(url, "migrate")
    assert result.returncode == 0, result.stderr
    assert "is at revision" in result.stdout
    return url


@pytest.fixture
def private_postgres() -> Iterator[str]:
    """An empty PostgreSQL database of this test's own, dropped afterwards."""
    need_services("TEST_DATABASE_URL")
    assert TEST_DATABASE_URL is not None
    with scratch_database(normalize_database_url(TEST_DATABASE_URL), "blog_helper2") as url:
        yield url


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """Overrides conftest's: a SQLite file migrated by `manage.py migrate`."""
    return migrated_sqlite(tmp_path)


@pytest.fixture
def redis_url() -> None:
    """Overrides conftest's: no Redis for these tests."""
    return None


# --- migrate ---------------------------------------------------------------------------------


def test_migrate_is_idempotent(tmp_path: Path) -> None:
    url = migrated_sqlite(tmp_path)
    again = manage(url, "migrate")
    assert again.returncode == 0, again.stderr
    with sqlite3.connect(tmp_path / "blog.db") as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    assert {"users", "posts", "alembic_version"} <= tables


@pytest.mark.postgres
def test_migrate_postgres(private_postgres: str) -> None:
    result = manage(private_postgres, "migrate")
    assert result.returncode == 0, result.stderr
    assert "is at revision" in result.stdout


# --- create-user -----------------------------------------------------------------------------


async def me(client: httpx.AsyncClient, username: str, password: str) -> dict[str, Any]:
    response = await client.get("/users/me", headers=await login(client, username, password))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_create_user_can_log_in(database_url: str, client: httpx.AsyncClient) -> None:
    result = manage(
        database_url,
        *("create-user", "--username", "Carol", "--email", "Carol@Example.com"),
        "--password-stdin",
        stdin="correct horse battery\n",
    )
    assert result.returncode == 0, result.stderr
    assert "Carol" in result.stdout

    user = await me(client, "carol", "correct horse battery")  # login ignores case
    assert user["username"] == "Carol"
    assert user["email"] == "carol@example.com"
    assert user["role"] == "user"
    # The trailing newline of stdin is not part of the password.
    bad = await client.post(
        "/auth/login", data={"username": "carol", "password": "correct horse battery\n"}
    )
    assert bad.status_code == 401


async def test_create_user_admin(database_url: str, client: httpx.AsyncClient) -> None:
    result = manage(
        database_url,
        *("create-user", "--username", "boss", "--email", "boss@example.com", "--admin"),
        "--password-stdin",
        stdin="password123",
    )
    assert result.returncode == 0, result.stderr
    assert (await me(client, "boss", "password123"))["role"] == "admin"


def test_create_user_duplicates_are_refused(database_url: str) -> None:
    def create(username: str, email: str) -> subprocess.CompletedProcess[str]:
        return manage(
            database_url,
            *("create-user", "--username", username, "--email", email, "--password-stdin"),
            stdin="password123\n",
        )

    assert create("dave", "dave@example.com").returncode == 0
    assert_one_error_line(create("DAVE", "other@example.com"), "username", "already taken")
    assert_one_error_line(create("other", "Dave@Example.com"), "email", "already registered")


@pytest.mark.parametrize(
    ("username", "email", "password", "fragment"),
    [
        ("ok_user", "ok@example.com", "short", "invalid password"),
        ("ok_user", "not-an-email", "password123", "invalid email"),
        ("x", "ok@example.com", "password123", "invalid username"),
        ("bad name!", "ok@example.com", "password123", "invalid username"),
    ],
)
def test_create_user_validates_input(
    database_url: str, username: str, email: str, password: str, fragment: str
) -> None:
    result = manage(
        database_url,
        *("create-user", "--username", username, "--email", email, "--password-stdin"),
        stdin=password + "\n",
    )
    assert_one_error_line(result, fragment)


def test_create_user_needs_a_migrated_database(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    result = manage(
        url,
        *("create-user", "--username", "erin", "--email", "erin@example.com", "--password-stdin"),
        stdin="password123\n",
    )
    assert_one_error_line(result, "manage.py migrate")


# --- seed-demo -------------------------------------------------------------------------------


def sqlite_counts(path: Path) -> dict[str, Any]:
    with sqlite3.connect(path) as connection:

        def one(query: str) -> Any:
            return connection.execute(query).fetchone()[0]

        return {
            "users": one("SELECT count(*) FROM users"),
            "demo_users": one("SELECT count(*) FROM users WHERE username LIKE 'demo_user_%'"),
            "posts": one("SELECT count(*) FROM posts"),
            "distinct_titles": one("SELECT count(DISTINCT lower(title)) FROM posts"),
            "published": one("SELECT count(*) FROM posts WHERE published"),
            "edited_before_created": one(
                "SELECT count(*) FROM posts WHERE updated_at < created_at"
            ),
            "orphans": one(
                "SELECT count(*) FROM posts WHERE author_id NOT IN (SELECT id FROM users)"
            ),
            "comments": one("SELECT count(*) FROM comments") if HAS_COMMENTS else 0,
        }


async def test_seed_demo_sqlite(
    database_url: str, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    first = manage(
        database_url,
        *("seed-demo", "--users", "4", "--posts", "300", "--comments", "50", "--seed", "7"),
        *("--batch-size", "64", "--password", "demo-secret"),
    )
    assert first.returncode == 0, first.stderr
    assert "seeded 4 users, 300 posts" in first.stdout
    assert "posts: 300 inserted" in first.stderr  # no terminal: a summary, not a bar
    counts = sqlite_counts(tmp_path / "blog.db")
    assert counts["users"] == counts["demo_users"] == 4
    assert counts["posts"] == counts["distinct_titles"] == 300
    assert 0.75 * 300 <= counts["published"] < 300
    assert counts["edited_before_created"] == 0
    assert counts["orphans"] == 0
    assert counts["comments"] == (50 if HAS_COMMENTS else 0)

    # Running it again continues the numbering instead of clashing.
    second = manage(
        database_url, *("seed-demo", "--users", "2", "--posts", "20", "--comments", "5")
    )
    assert second.returncode == 0, second.stderr
    counts = sqlite_counts(tmp_path / "blog.db")
    assert counts["demo_users"] == 6
    assert counts["posts"] == counts["distinct_titles"] == 320
    with sqlite3.connect(tmp_path / "blog.db") as connection:
        names = [row[0] for row in connection.execute("SELECT username FROM users ORDER BY id")]
    assert names == [f"demo_user_{n}" for n in range(1, 7)]

    # --users 0: posts by the existing users.
    third = manage(database_url, *("seed-demo", "--users", "0", "--posts", "5", "--comments", "0"))
    assert third.returncode == 0, third.stderr
    assert sqlite_counts(tmp_path / "blog.db")["posts"] == 325

    # The data works through the API: the demo password, the search, the listing.
    await login(client, "demo_user_1", "demo-secret")
    found = await client.get("/posts", params={"q": "python", "count": "true"})
    assert found.status_code == 200
    assert int(found.headers["x-total-count"]) > 10
    listed = await client.get("/posts", params={"limit": 100})
    assert listed.status_code == 200 and len(listed.json()) == 100


@pytest.mark.postgres
def test_seed_demo_postgres(private_postgres: str) -> None:
    assert manage(private_postgres, "migrate").returncode == 0
    for _ in range(2):
        result = manage(
            private_postgres,
            *("seed-demo", "--users", "5", "--posts", "1000", "--comments", "200"),
            *("--batch-size", "300", "--jobs", "3"),
        )
        assert result.returncode == 0, result.stderr

    async def counts() -> tuple[Any, ...]:
        import asyncpg

        url = private_postgres.replace("postgresql+asyncpg://", "postgresql://")
        connection = await asyncpg.connect(url)
        try:
            row = await connection.fetchrow(
                "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM posts),"
                " (SELECT count(DISTINCT lower(title)) FROM posts),"
                " (SELECT count(*) FROM posts WHERE updated_at < created_at),"
                " (SELECT count(*) FROM posts WHERE published)"
            )
            comments = await connection.fetchval("SELECT count(*) FROM comments")
        finally:
            await connection.close()
        assert row is not None
        return (*tuple(row), comments)

    users, posts, titles, backwards, published, comments = in_own_thread(asyncio.run, counts())
    assert (users, posts, titles, backwards) == (10, 2000, 2000, 0)
    assert 0.85 * 2000 <= published <= 0.95 * 2000
    assert comments == (400 if HAS_COMMENTS else 0)


def test_seed_demo_refuses_a_short_password(database_url: str) -> None:
    result = manage(database_url, "seed-demo", "--password", "short")
    assert_one_error_line(result, "invalid password")


def test_seed_demo_without_users(database_url: str) -> None:
    result = manage(database_url, *("seed-demo", "--users", "0", "--posts", "3"))
    assert_one_error_line(result, "--users")


# --- unreachable database --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "stdin"),
    [
        (("migrate",), None),
        (
            ("create-user", "--username", "frank", "--email", "f@example.com", "--password-stdin"),
            "password123\n",
        ),
        (("seed-demo", "--users", "1", "--posts", "1"), None),
    ],
    ids=["migrate", "create-user", "seed-demo"],
)
def test_unreachable_database_is_one_clear_line(args: tuple[str, ...], stdin: str | None) -> None:
    started = time.monotonic()
    result = manage(UNREACHABLE_URL.replace("root@", "root:s3cret@"), *args, stdin=stdin)
    assert time.monotonic() - started < 60
    assert_one_error_line(
        result, "cannot reach the database at postgresql+asyncpg://root@127.0.0.1:1/x: "
    )
    assert "s3cret" not in result.stderr + result.stdout


def test_bad_configuration_is_one_clear_line(tmp_path: Path) -> None:
    result = manage("mysql://nowhere/x", "migrate")
    assert_one_error_line(result, "invalid configuration", "DATABASE_URL")


def test_usage_errors_exit_2(database_url: str) -> None:
    result = manage(database_url, "create-user", "--username", "only")
    assert result.returncode == 2
    assert "--email" in result.stderr
