"""posts.search_document: PostgreSQL's full-text document, stored

The search used to filter on to_tsvector(...) computed per row at query time (a GIN index on
the expression helps only rare words; for common ones the planner walks the created_at index and
computes the document of every row it passes). A stored generated column is computed once per
write. On SQLite nothing changes: it searches through its FTS5 table.

Adding the column rewrites the posts table (about 20 s for 100,000 posts), holding a lock that
blocks writes to posts meanwhile.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DOCUMENT = "to_tsvector('english'::regconfig, (title::text || ' '::text) || content)"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_posts_search", table_name="posts")
    op.execute(
        f"ALTER TABLE posts ADD COLUMN search_document tsvector GENERATED ALWAYS AS ({DOCUMENT}) STORED"
    )
    op.create_index("ix_posts_search", "posts", ["search_document"], postgresql_using="gin")
    op.execute("ANALYZE posts")  # the planner's statistics for the new column


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_posts_search", table_name="posts")
    op.drop_column("posts", "search_document")
    op.create_index("ix_posts_search", "posts", [sa.text(DOCUMENT)], postgresql_using="gin")
