"""users and posts

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=50), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("role", sa.String(length=16), server_default="user", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
    )
    op.create_index(
        "uq_users_username_lower", "users", [sa.text("lower(username)")], unique=True
    )
    op.create_table(
        "posts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(length=255), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("published", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("author_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["author_id"],
            ["users.id"],
            name=op.f("fk_posts_author_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_posts")),
    )
    op.create_index("uq_posts_title_lower", "posts", [sa.text("lower(title)")], unique=True)
    op.create_index("ix_posts_author_created", "posts", ["author_id", "created_at", "id"])
    op.create_index("ix_posts_published_created", "posts", ["published", "created_at", "id"])
    op.create_index("ix_posts_published_title", "posts", ["published", "title", "id"])
    op.create_index("ix_posts_published_updated", "posts", ["published", "updated_at", "id"])

    if op.get_bind().dialect.name == "postgresql":
        op.create_index(
            "ix_posts_search",
            "posts",
            [sa.text("to_tsvector('english'::regconfig, (title::text || ' '::text) || content)")],
            postgresql_using="gin",
        )
    else:
        # SQLite: an FTS5 index over title and content, kept in step by triggers.
        op.execute(
            "CREATE VIRTUAL TABLE posts_fts USING fts5("
            "title, content, content='posts', content_rowid='id', tokenize='porter unicode61')"
        )
        op.execute(
            "CREATE TRIGGER posts_fts_insert AFTER INSERT ON posts BEGIN "
            "INSERT INTO posts_fts(rowid, title, content) "
            "VALUES (new.id, new.title, new.content); END"
        )
        op.execute(
            "CREATE TRIGGER posts_fts_delete AFTER DELETE ON posts BEGIN "
            "INSERT INTO posts_fts(posts_fts, rowid, title, content) "
            "VALUES ('delete', old.id, old.title, old.content); END"
        )
        op.execute(
            "CREATE TRIGGER posts_fts_update AFTER UPDATE OF title, content ON posts BEGIN "
            "INSERT INTO posts_fts(posts_fts, rowid, title, content) "
            "VALUES ('delete', old.id, old.title, old.content); "
            "INSERT INTO posts_fts(rowid, title, content) "
            "VALUES (new.id, new.title, new.content); END"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_posts_search", table_name="posts")
    else:
        for trigger in ("posts_fts_insert", "posts_fts_delete", "posts_fts_update"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute("DROP TABLE IF EXISTS posts_fts")
    op.drop_table("posts")
    op.drop_table("users")
