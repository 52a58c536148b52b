"""SQLite: ids are never reused (AUTOINCREMENT)

Without AUTOINCREMENT, SQLite gives a new row the largest id in use plus one: after the newest
post is deleted, the next one gets its id, and the deleted post's ETag, an old If-Match or a
replayed idempotent answer (`Location: /posts/1`) would describe another post. AUTOINCREMENT
keeps the largest id ever given in sqlite_sequence. SQLite cannot add it to a table, so users,
posts and comments are rebuilt (batch mode: copy, drop, rename), and what the rebuild drops is
put back: the expression indexes (which reflection skips) and the FTS5 triggers on posts.

The counters start past every id still in use and every id an idempotent answer kept (a post or
comment deleted before this migration may be one of them).

PostgreSQL is unchanged: its sequences never hand out an id twice.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

import warnings
from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("users", "posts", "comments")  # parents first
EXPRESSION_INDEXES = {
    "users": ("uq_users_username_lower", "username"),
    "posts": ("uq_posts_title_lower", "title"),
}
FTS_TRIGGERS = (
    "CREATE TRIGGER posts_fts_insert AFTER INSERT ON posts BEGIN "
    "INSERT INTO posts_fts(rowid, title, content) "
    "VALUES (new.id, new.title, new.content); END",
    "CREATE TRIGGER posts_fts_delete AFTER DELETE ON posts BEGIN "
    "INSERT INTO posts_fts(posts_fts, rowid, title, content) "
    "VALUES ('delete', old.id, old.title, old.content); END",
    "CREATE TRIGGER posts_fts_update AFTER UPDATE OF title, content ON posts BEGIN "
    "INSERT INTO posts_fts(posts_fts, rowid, title, content) "
    "VALUES ('delete', old.id, old.title, old.content); "
    "INSERT INTO posts_fts(rowid, title, content) "
    "VALUES (new.id, new.title, new.content); END",
)
# The largest id an idempotent answer (kept 24 h) still names, per table.
REPLAYED_IDS = {
    "posts": "SELECT max(CAST(substr(location, 8) AS INTEGER)) FROM idempotency_keys "
    "WHERE endpoint = 'POST /posts' AND status_code = 201 AND location LIKE '/posts/%'",
    "comments": "SELECT max(CAST(json_extract(body, '$.id') AS INTEGER)) FROM idempotency_keys "
    "WHERE endpoint LIKE 'POST /posts/%/comments' AND status_code = 201 AND json_valid(body)",
}


def _rebuild(autoincrement: bool) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    # Dropping a table while foreign keys are enforced deletes its rows first, cascading to the
    # rows that refer to them; Alembic's own connection never turns enforcement on.
    if bind.exec_driver_sql("PRAGMA foreign_keys").scalar():
        raise RuntimeError("migration 0005 must run with PRAGMA foreign_keys=OFF")
    for trigger in ("posts_fts_insert", "posts_fts_delete", "posts_fts_update"):
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    for table in TABLES:
        with warnings.catch_warnings():
            # Reflection skips the expression indexes; they are created again just below.
            warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression")
            with op.batch_alter_table(
                table, recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}
            ):
                pass
        if table in EXPRESSION_INDEXES:
            name, column = EXPRESSION_INDEXES[table]
            op.execute(f"DROP INDEX IF EXISTS {name}")
            op.create_index(name, table, [sa.text(f"lower({column})")], unique=True)
    for statement in FTS_TRIGGERS:
        op.execute(statement)
    if not autoincrement:
        tables = ", ".join(f"'{table}'" for table in TABLES)
        op.execute(f"DELETE FROM sqlite_sequence WHERE name IN ({tables})")
        return
    for table, query in REPLAYED_IDS.items():
        replayed = bind.exec_driver_sql(query).scalar()
        if replayed is None:
            continue
        # The copy set each counter to the table's largest id; raise it past older ones.
        op.execute(
            sa.text(
                "UPDATE sqlite_sequence SET seq = :id WHERE name = :table AND seq < :id"
            ).bindparams(id=int(replayed), table=table)
        )
        op.execute(
            sa.text(
                "INSERT INTO sqlite_sequence (name, seq) SELECT :table, :id "
                "WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = :table)"
            ).bindparams(id=int(replayed), table=table)
        )


def upgrade() -> None:
    _rebuild(autoincrement=True)


def downgrade() -> None:
    _rebuild(autoincrement=False)
