"""`python manage.py`, run as the operator runs it: a subprocess against a SQLite file migrated by
`manage.py migrate` (and a private PostgreSQL database when TEST_DATABASE_URL is set)."""

from __future__ import annotations

import asyncio
import os
import pty
import re
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ROOT, TEST_DATABASE_URL, TEST_SECRET, in_own_thread, login, need_services
from markdown_it import MarkdownIt
from private_services import scratch_database
from sqlalchemy.engine import make_url

import models
from config import Settings, normalize_database_url
from manage import TECH_WORDS, DemoText

UNREACHABLE_URL = "postgresql://root@127.0.0.1:1/x"
HAS_COMMENTS = getattr(models, "Comment", None) is not None
# Variables of the service that the developer's environment must not leak into the commands.
SERVICE_VARIABLES = {name.upper() for name in Settings.model_fields} | {
    "PORT",
    "HOST",
    "PROMETHEUS_MULTIPROC_DIR",
    # rich (Typer's messages, the progress bars) would style or draw as on a terminal.
    "FORCE_COLOR",
    "PY_COLORS",
    "TTY_COMPATIBLE",
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
    url = normalize_database_url(TEST_DATABASE_URL)
    # Named after the test database, so parallel runs on one server never share a name prefix.
    with scratch_database(url, f"{make_url(url).database}_scratch") as scratch:
        yield scratch


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
    # Rendered, slugged and tagged as the API stores posts; tags filter and count.
    posts = listed.json()
    assert all(post["content_html"] and post["excerpt"] for post in posts)
    assert len({post["slug"] for post in posts}) == 100
    assert sum(1 for post in posts if post["tags"]) > 50
    by_slug = await client.get(f"/posts/slug/{posts[0]['slug']}")
    assert by_slug.json()["id"] == posts[0]["id"]
    tags = (await client.get("/tags")).json()
    assert 3 <= len(tags) <= 8 and tags[0]["post_count"] > 10
    first = tags[0]
    tagged = await client.get("/posts", params={"tag": first["name"], "count": "true"})
    assert int(tagged.headers["x-total-count"]) == first["post_count"]


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
            slugs = await connection.fetchval("SELECT count(DISTINCT slug) FROM posts")
            tagged = await connection.fetchval("SELECT count(DISTINCT post_id) FROM post_tags")
        finally:
            await connection.close()
        assert row is not None
        return (*tuple(row), comments, slugs, tagged)

    users, posts, titles, backwards, published, comments, slugs, tagged = in_own_thread(
        asyncio.run, counts()
    )
    assert (users, posts, titles, backwards, slugs) == (10, 2000, 2000, 0, 2000)
    assert tagged > 1000
    assert 0.85 * 2000 <= published <= 0.95 * 2000
    assert comments == (400 if HAS_COMMENTS else 0)


def test_seed_demo_refuses_a_short_password(database_url: str) -> None:
    result = manage(database_url, "seed-demo", "--password", "short")
    assert_one_error_line(result, "invalid password")


def test_seed_demo_without_users(database_url: str) -> None:
    result = manage(database_url, *("seed-demo", "--users", "0", "--posts", "3"))
    assert_one_error_line(result, "--users")


@pytest.mark.parametrize(
    ("value", "fragment"), [("abc", "'abc' is not a valid"), ("-1", "not in the range x>=0")]
)
def test_seed_demo_refuses_a_malformed_count(
    database_url: str, tmp_path: Path, value: str, fragment: str
) -> None:
    result = manage(database_url, "seed-demo", "--users", value)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert "Invalid value for '--users'" in result.stderr
    assert fragment in result.stderr
    assert "non_negative" not in result.stderr  # the parser's converter function, once
    assert sqlite_counts(tmp_path / "blog.db")["users"] == 0


def test_seed_demo_is_repeatable_with_a_seed(database_url: str, tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        shutil.copy(tmp_path / "blog.db", tmp_path / f"{name}.db")

    def seeded(name: str, seed: str) -> tuple[list[Any], list[Any]]:
        url = f"sqlite+aiosqlite:///{tmp_path / f'{name}.db'}"
        counts = ("--users", "3", "--posts", "40", "--comments", "30")
        result = manage(url, "seed-demo", *counts, "--seed", seed)
        assert result.returncode == 0, result.stderr
        with sqlite3.connect(tmp_path / f"{name}.db") as connection:
            posts = connection.execute(
                "SELECT title, content, author_id, published FROM posts ORDER BY id"
            ).fetchall()
            comments = (
                connection.execute("SELECT post_id, author_id, text FROM comments ORDER BY id")
                if HAS_COMMENTS
                else []
            )
            return posts, list(comments)

    first = seeded("a", "11")
    assert len(first[0]) == 40
    assert seeded("b", "11") == first
    assert seeded("c", "12")[0] != first[0]


def test_demo_posts_are_markdown_like_real_posts() -> None:
    text = DemoText(seed=5, pool_size=400)
    posts = [text.content() for _ in range(400)]
    parser = MarkdownIt("commonmark")
    having: Counter[str] = Counter()  # posts with at least one such element
    languages: set[str] = set()
    for content in posts:
        assert not re.search("[\ue000-\uf8ff]", content)  # every topic placeholder filled in
        tokens = parser.parse(content)
        assert tokens[0].type == "paragraph_open"  # an opening paragraph, then sections
        inline = [child for token in tokens for child in token.children or ()]
        having.update({token.type for token in [*tokens, *inline]})
        languages |= {token.info for token in tokens if token.type == "fence"}
        for link in (token for token in inline if token.type == "link_open"):
            assert str(link.attrs["href"]).startswith(("http://", "https://"))

    share = {kind: count / len(posts) for kind, count in having.items()}
    assert 0.5 < share["heading_open"] < 1
    assert 0.15 < share.get("bullet_list_open", 0) + share.get("ordered_list_open", 0) < 0.6
    assert 0.05 < share["fence"] < 0.4
    assert languages == {"python", "sql", "bash", "json"}
    assert 0.03 < share["blockquote_open"] < 0.3
    assert 0.1 < share["link_open"] < 0.5
    for kind in ("em_open", "strong_open", "code_inline"):
        assert 0.1 < share[kind] < 1, kind

    # Topic words keep a spread of search selectivities, "python" the most common.
    topic_share = {
        word: sum(bool(re.search(rf"\b{word}\b", post, re.I)) for post in posts) / len(posts)
        for word in TECH_WORDS
    }
    assert max(topic_share, key=topic_share.__getitem__) == "python"
    assert 0.1 < topic_share["python"] < 0.4
    assert min(topic_share.values()) < 0.05


def test_seed_demo_draws_progress_bars_on_a_terminal(database_url: str) -> None:
    controller, terminal = pty.openpty()
    command = [sys.executable, str(ROOT / "manage.py"), "seed-demo"]
    counts = ("--users", "2", "--posts", "50", "--comments", "20")
    with subprocess.Popen(
        [*command, *counts],
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
        env=command_env(database_url, TERM="xterm-256color", COLUMNS="120"),
        cwd=Path(__file__).resolve().parent,
    ) as process:
        os.close(terminal)
        output = b""
        while True:
            ready, _, _ = select.select([controller], [], [], 120)
            assert ready, "no output for 120 s"
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the command has closed the terminal
                break
            if not chunk:
                break
            output += chunk
        process.wait(timeout=60)
    os.close(controller)
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output.decode(errors="replace"))
    assert process.returncode == 0, screen
    for what, total in (("users", 2), ("posts", 50), ("comments", 20 if HAS_COMMENTS else 0)):
        if total:
            assert re.search(rf"{what} +━+ 100% +{total}/{total}", screen), screen
    assert "inserted in" not in screen  # the summary lines are for logs
    assert "seeded 2 users, 50 posts" in screen


def test_seed_demo_interrupted_is_one_line_and_exit_130(database_url: str) -> None:
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "seed-demo", "--posts", "1000000"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=command_env(database_url),
        cwd=Path(__file__).resolve().parent,
        # A shell's background job ignores SIGINT, and Python would then too.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert process.stderr is not None
    first = process.stderr.readline()  # the users are in; the posts are being written
    assert first.startswith("users: "), first
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, (stdout, stderr)
    assert stderr.strip().splitlines() == ["error: interrupted"]
    assert "seeded" not in stdout


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
