"""posts: slug, rendered content (content_html, excerpt, reading_time_minutes), tags

Existing posts get their rendering and a slug made from their title (`-2`, `-3`, ... in id
order where two titles give one slug) before the unique index on slugs is built. The new
columns are added with defaults, which neither backend has to rewrite the table for; the
rendering then updates each post once (batches of 500; about a minute per 100,000 posts).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op
from rendering import numbered_slug, render, slug_from_title

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 500


def upgrade() -> None:
    op.add_column("posts", sa.Column("slug", sa.String(80), server_default="", nullable=False))
    op.add_column("posts", sa.Column("content_html", sa.Text(), server_default="", nullable=False))
    op.add_column("posts", sa.Column("excerpt", sa.Text(), server_default="", nullable=False))
    op.add_column(
        "posts",
        sa.Column("reading_time_minutes", sa.Integer(), server_default="1", nullable=False),
    )
    op.add_column("posts", sa.Column("tags", sa.Text(), server_default="", nullable=False))
    op.create_table(
        "post_tags",
        sa.Column("post_id", sa.Integer(), nullable=False),
        sa.Column("tag", sa.String(30), nullable=False),
        sa.ForeignKeyConstraint(
            ["post_id"], ["posts.id"], name=op.f("fk_post_tags_post_id_posts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("post_id", "tag", name=op.f("pk_post_tags")),
    )
    op.create_index("ix_post_tags_tag_post", "post_tags", ["tag", "post_id"])
    _render_existing_posts()
    op.create_index("uq_posts_slug", "posts", ["slug"], unique=True)


def _render_existing_posts() -> None:
    connection = op.get_bind()
    update = sa.text(
        "UPDATE posts SET slug = :slug, content_html = :content_html, excerpt = :excerpt, "
        "reading_time_minutes = :reading_time_minutes WHERE id = :id"
    )
    taken: set[str] = set()
    last_id = 0
    while True:
        rows = connection.execute(
            sa.text(
                "SELECT id, title, content FROM posts WHERE id > :last ORDER BY id LIMIT :batch"
            ),
            {"last": last_id, "batch": BATCH},
        ).all()
        if not rows:
            return
        values = []
        for post_id, title, content in rows:
            base = slug = slug_from_title(title)
            number = 1
            while slug in taken:
                number += 1
                slug = numbered_slug(base, number)
            taken.add(slug)
            rendered = render(content)
            values.append(
                {
                    "id": post_id,
                    "slug": slug,
                    "content_html": rendered.html,
                    "excerpt": rendered.excerpt,
                    "reading_time_minutes": rendered.reading_time_minutes,
                }
            )
        connection.execute(update, values)
        last_id = rows[-1][0]


def downgrade() -> None:
    op.drop_index("uq_posts_slug", table_name="posts")
    op.drop_index("ix_post_tags_tag_post", table_name="post_tags")
    op.drop_table("post_tags")
    # Plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+): a batch copy of posts would drop the
    # FTS5 triggers with the old table.
    for column in ("tags", "reading_time_minutes", "excerpt", "content_html", "slug"):
        op.drop_column("posts", column)
