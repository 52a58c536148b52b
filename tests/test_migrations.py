"""Alembic: the migrations build exactly the models' schema, both ways, on both databases."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import asyncpg
import pytest
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from conftest import ROOT, alembic_upgrade, in_own_thread, reset_postgres_schema

import migrations
from alembic import command

pytestmark = [
    # autogenerate cannot compare expression indexes on SQLite; they are checked by name below
    pytest.mark.filterwarnings("ignore:autogenerate skipping metadata-specified expression"),
    pytest.mark.filterwarnings("ignore:Skipped unsupported reflection of expression-based"),
]

SQLITE_INDEXES = {
    "uq_users_username_lower",
    "uq_posts_title_lower",
    "ix_posts_published_created",
    "ix_posts_published_updated",
    "ix_posts_published_title",
    "ix_posts_author_created",
    "uq_posts_slug",
    "ix_post_tags_tag_post",
}
SQLITE_TRIGGERS = {"posts_fts_insert", "posts_fts_delete", "posts_fts_update"}


def alembic_config(database_url: str) -> AlembicConfig:
    config = AlembicConfig(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "alembic"))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logger"] = False
    return config


def _check(database_url: str) -> None:
    # autogenerate against the models with env.py's own include_object; raises on any difference
    command.check(alembic_config(database_url))


def _downgrade_base(database_url: str) -> None:
    command.downgrade(alembic_config(database_url), "base")


def check(database_url: str) -> None:
    in_own_thread(_check, database_url)


def downgrade_base(database_url: str) -> None:
    in_own_thread(_downgrade_base, database_url)


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite+aiosqlite://")).get_current_head()
    assert head is not None
    return head


def test_the_service_knows_alembics_revisions() -> None:
    """migrations.known_revisions reads alembic/versions/ without alembic: the same answer."""
    scripts = ScriptDirectory.from_config(alembic_config("sqlite+aiosqlite://"))
    known = frozenset(script.revision for script in scripts.walk_revisions())
    assert migrations.known_revisions() == (head_revision(), known)


# --- SQLite --------------------------------------------------------------------------------------


def sqlite_objects(path: Path) -> dict[str, set[str]]:
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT type, name FROM sqlite_master").fetchall()
    objects: dict[str, set[str]] = {}
    for kind, name in rows:
        objects.setdefault(kind, set()).add(name)
    return objects


def sqlite_version(path: Path) -> list[str]:
    with sqlite3.connect(path) as connection:
        return [row[0] for row in connection.execute("SELECT version_num FROM alembic_version")]


def assert_sqlite_schema(path: Path) -> None:
    objects = sqlite_objects(path)
    assert {"users", "posts", "alembic_version", "posts_fts"} <= objects["table"]
    assert objects["index"] >= SQLITE_INDEXES
    assert objects.get("trigger", set()) >= SQLITE_TRIGGERS
    with sqlite3.connect(path) as connection:
        sql = dict(connection.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index'"))
    for name in ("uq_users_username_lower", "uq_posts_title_lower"):
        assert "UNIQUE" in sql[name].upper() and "lower(" in sql[name].lower()
    # Ids are never reused; a later batch rebuild must keep AUTOINCREMENT (table_kwargs).
    with sqlite3.connect(path) as connection:
        tables = dict(connection.execute("SELECT name, sql FROM sqlite_master WHERE type='table'"))
    for table in ("users", "posts", "comments"):
        assert "AUTOINCREMENT" in tables[table], tables[table]
    assert sqlite_version(path) == [head_revision()]


def test_sqlite_upgrade_matches_the_models(tmp_path: Path) -> None:
    path = tmp_path / "fresh.db"
    url = f"sqlite+aiosqlite:///{path}"
    alembic_upgrade(url)
    assert_sqlite_schema(path)
    check(url)


def test_sqlite_downgrade_then_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "cycle.db"
    url = f"sqlite+aiosqlite:///{path}"
    alembic_upgrade(url)
    downgrade_base(url)
    objects = sqlite_objects(path)
    # sqlite_sequence (AUTOINCREMENT's counters) is SQLite's own and cannot be dropped
    assert objects.get("table", set()) - {"sqlite_sequence"} <= {"alembic_version"}
    assert not objects.get("trigger")
    assert sqlite_version(path) == []
    alembic_upgrade(url)
    assert_sqlite_schema(path)
    check(url)


def test_sqlite_search_index_follows_writes(tmp_path: Path) -> None:
    """The FTS triggers the migration installs keep posts_fts in step with posts."""
    path = tmp_path / "fts.db"
    alembic_upgrade(f"sqlite+aiosqlite:///{path}")
    with sqlite3.connect(path) as connection:
        connection.execute(
            "INSERT INTO users (id, username, email, password_hash, role, created_at) "
            "VALUES (1, 'u', 'u@example.com', 'x', 'user', '2026-01-01 00:00:00.000000')"
        )
        connection.execute(
            "INSERT INTO posts (id, title, content, published, author_id, version, created_at, "
            "updated_at) VALUES (1, 'Otter', 'river', 1, 1, 1, '2026-01-01 00:00:00.000000', "
            "'2026-01-01 00:00:00.000000')"
        )

        def match(word: str) -> list[int]:
            query = "SELECT rowid FROM posts_fts WHERE posts_fts MATCH ?"
            return [row[0] for row in connection.execute(query, (word,))]

        assert match("otter") == [1]
        connection.execute("UPDATE posts SET title = 'Beaver' WHERE id = 1")
        assert match("otter") == []
        assert match("beaver") == [1]
        connection.execute("DELETE FROM posts WHERE id = 1")
        assert match("beaver") == []
        assert match("river") == []


# --- PostgreSQL ----------------------------------------------------------------------------------


def postgres_query(url: str, query: str) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            return list(await connection.fetch(query))
        finally:
            await connection.close()

    result: list[asyncpg.Record] = in_own_thread(asyncio.run, run())
    return result


def assert_postgres_schema(url: str) -> None:
    tables = {
        row["tablename"]
        for row in postgres_query(url, "SELECT tablename FROM pg_tables WHERE schemaname='public'")
    }
    assert {"users", "posts", "alembic_version"} <= tables
    indexes = {
        row["indexname"]: row["indexdef"]
        for row in postgres_query(
            url, "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
        )
    }
    assert SQLITE_INDEXES | {"ix_posts_search"} <= set(indexes)
    for name in ("uq_users_username_lower", "uq_posts_title_lower"):
        assert "UNIQUE" in indexes[name] and "lower(" in indexes[name]
    assert "USING gin (search_document)" in indexes["ix_posts_search"]
    (document,) = postgres_query(
        url,
        "SELECT attgenerated, pg_get_expr(adbin, adrelid) AS expression FROM pg_attribute "
        "JOIN pg_attrdef ON adrelid = attrelid AND adnum = attnum "
        "WHERE attrelid = 'posts'::regclass AND attname = 'search_document'",
    )
    assert document["attgenerated"] == b"s"  # stored ("char" comes back as bytes)
    assert document["expression"].startswith("to_tsvector('english'")
    versions = [row["version_num"] for row in postgres_query(url, "SELECT * FROM alembic_version")]
    assert versions == [head_revision()]


@pytest.mark.postgres
def test_postgres_upgrade_downgrade_upgrade(postgres_url: str) -> None:
    """From an empty schema to head, back to base and to head again (ends at head, so the
    session's other PostgreSQL tests keep working)."""
    try:
        reset_postgres_schema(postgres_url)
        alembic_upgrade(postgres_url)
        assert_postgres_schema(postgres_url)
        check(postgres_url)

        downgrade_base(postgres_url)
        tables = {
            row["tablename"]
            for row in postgres_query(
                postgres_url, "SELECT tablename FROM pg_tables WHERE schemaname='public'"
            )
        }
        assert tables <= {"alembic_version"}
        assert postgres_query(postgres_url, "SELECT * FROM alembic_version") == []
    finally:
        alembic_upgrade(postgres_url)
    assert_postgres_schema(postgres_url)
    check(postgres_url)


def _upgrade_to(database_url: str, revision: str) -> None:
    command.upgrade(alembic_config(database_url), revision)


def test_sqlite_0005_keeps_every_row_and_never_reuses_ids(tmp_path: Path) -> None:
    """An existing file (at 0004) is rebuilt with AUTOINCREMENT: rows, comments, search and the
    case-insensitive indexes survive; the counters start past the ids still in use and past the
    ids an idempotent answer still names."""
    path = tmp_path / "old.db"
    url = f"sqlite+aiosqlite:///{path}"
    in_own_thread(_upgrade_to, url, "0004")
    with sqlite3.connect(path) as connection:
        connection.execute(
            "INSERT INTO users (id, username, email, password_hash, role, created_at) "
            "VALUES (1, 'Ann', 'ann@example.com', 'x', 'user', '2026-01-01 00:00:00')"
        )
        for number in (1, 2, 3):
            connection.execute(
                "INSERT INTO posts (id, title, content, published, author_id, version, "
                f"created_at, updated_at) VALUES ({number}, 'Otter {number}', 'river', 1, 1, 1, "
                "'2026-01-01 00:00:00', '2026-01-01 00:00:00')"
            )
        connection.execute(
            "INSERT INTO comments (id, post_id, author_id, text, created_at) "
            "VALUES (4, 2, 1, 'hello', '2026-01-01 00:00:00')"
        )
        # Post 7 and comment 9 were created with an Idempotency-Key, then deleted.
        connection.execute(
            "INSERT INTO idempotency_keys (user_id, endpoint, key, fingerprint, status_code, "
            "body, location, created_at) VALUES (1, 'POST /posts', 'a', 'f', 201, '{\"id\": 7}', "
            "'/posts/7', '2026-01-01 00:00:00'), (1, 'POST /posts/2/comments', 'b', 'f', 201, "
            "'{\"id\": 9}', NULL, '2026-01-01 00:00:00')"
        )
    alembic_upgrade(url)
    assert_sqlite_schema(path)
    check(url)
    with sqlite3.connect(path) as connection:
        tables = dict(connection.execute("SELECT name, sql FROM sqlite_master WHERE type='table'"))
        for table in ("users", "posts", "comments"):
            assert "AUTOINCREMENT" in tables[table], tables[table]
        assert connection.execute("SELECT count(*) FROM posts").fetchone() == (3,)
        assert connection.execute("SELECT id, post_id FROM comments").fetchall() == [(4, 2)]
        matches = "SELECT rowid FROM posts_fts WHERE posts_fts MATCH 'otter' ORDER BY rowid"
        assert connection.execute(matches).fetchall() == [(1,), (2,), (3,)]
        with pytest.raises(sqlite3.IntegrityError):  # still unique case-insensitively
            connection.execute(
                "INSERT INTO users (username, email, password_hash, role, created_at) "
                "VALUES ('ANN', 'other@example.com', 'x', 'user', '2026-01-01 00:00:00')"
            )
        connection.execute("DELETE FROM comments")
        connection.execute("DELETE FROM posts WHERE id = 3")
        new_post = connection.execute(
            "INSERT INTO posts (title, content, published, author_id, version, created_at, "
            "updated_at) VALUES ('Beaver', 'dam', 1, 1, 1, '2026-01-01', '2026-01-01') "
            "RETURNING id"
        ).fetchone()
        assert new_post == (8,)  # past 7, which an idempotent answer names
        new_comment = connection.execute(
            "INSERT INTO comments (post_id, author_id, text, created_at) "
            "VALUES (1, 1, 'again', '2026-01-01') RETURNING id"
        ).fetchone()
        assert new_comment == (10,)
        assert connection.execute(
            "SELECT rowid FROM posts_fts WHERE posts_fts MATCH 'beaver'"
        ).fetchall() == [(8,)]


# --- 0006: existing posts get their rendering and slugs -------------------------------------------

EXISTING_POSTS = [
    (1, "Crème brûlée", "*Rich* <script>alert(1)</script> dessert"),
    (2, "Creme Brulee!", "second"),
    (3, "???", "word " * 300),
]


def assert_rendered(rows: list[tuple[int, str, str, str, int, str]]) -> None:
    by_id = {row[0]: row[1:] for row in rows}
    assert by_id[1][0] == "creme-brulee"
    assert by_id[2][0] == "creme-brulee-2"
    assert by_id[3][0] == "post"
    assert by_id[1][1] == "<p><em>Rich</em>  dessert</p>\n"
    assert by_id[1][2] == "Rich dessert"
    assert by_id[3][3] == 2  # 300 words
    assert by_id[3][2].endswith("…")
    assert all(row[4] == "" for row in by_id.values())  # no tags yet


SELECT_RENDERED = (
    "SELECT id, slug, content_html, excerpt, reading_time_minutes, tags FROM posts ORDER BY id"
)


def test_sqlite_0006_renders_existing_posts(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    url = f"sqlite+aiosqlite:///{path}"
    in_own_thread(_upgrade_to, url, "0004")
    with sqlite3.connect(path) as connection:
        connection.execute(
            "INSERT INTO users (id, username, email, password_hash, role, created_at) "
            "VALUES (1, 'u', 'u@example.com', 'x', 'user', '2026-01-01 00:00:00.000000')"
        )
        for post_id, title, content in EXISTING_POSTS:
            connection.execute(
                "INSERT INTO posts (id, title, content, published, author_id, version, "
                "created_at, updated_at) VALUES (?, ?, ?, 1, 1, 1, "
                "'2026-01-01 00:00:00.000000', '2026-01-01 00:00:00.000000')",
                (post_id, title, content),
            )
    alembic_upgrade(url)
    with sqlite3.connect(path) as connection:
        assert_rendered(connection.execute(SELECT_RENDERED).fetchall())
    assert_sqlite_schema(path)
    check(url)


@pytest.mark.postgres
def test_postgres_0006_renders_existing_posts(postgres_url: str) -> None:
    try:
        reset_postgres_schema(postgres_url)
        in_own_thread(_upgrade_to, postgres_url, "0004")
        postgres_query(
            postgres_url,
            "INSERT INTO users (id, username, email, password_hash, role, created_at) "
            "VALUES (1, 'u', 'u@example.com', 'x', 'user', now())",
        )
        for post_id, title, content in EXISTING_POSTS:
            title_sql, content_sql = title.replace("'", "''"), content.replace("'", "''")
            postgres_query(
                postgres_url,
                "INSERT INTO posts (id, title, content, published, author_id, version, "
                f"created_at, updated_at) VALUES ({post_id}, '{title_sql}', '{content_sql}', "
                "true, 1, 1, now(), now())",
            )
        alembic_upgrade(postgres_url)
        rows = postgres_query(postgres_url, SELECT_RENDERED)
        assert_rendered([tuple(row.values()) for row in rows])
        check(postgres_url)
    finally:
        reset_postgres_schema(postgres_url)
        alembic_upgrade(postgres_url)
