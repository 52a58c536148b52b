"""SQLAlchemy models: the single definition of the schema (Alembic migrates to it)."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from sqlalchemy import (
    Boolean,
    Computed,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import TSVECTOR
from sqlalchemy.engine.default import DefaultExecutionContext
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from rendering import Rendered, render, slug_from_title

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# The full-text document PostgreSQL stores in posts.search_document, spelled as PostgreSQL
# prints it back (so Alembic's comparison sees no change).
POST_SEARCH_DOCUMENT = "to_tsvector('english'::regconfig, (title::text || ' '::text) || content)"

# SQLite without AUTOINCREMENT hands a deleted row's id to the next insert (the largest id in use
# plus one), and an old ETag, If-Match, token or idempotent answer would then name another
# object (migration 0005). PostgreSQL's sequences never go back.
NEVER_REUSE_IDS: dict[str, Any] = {"sqlite_autoincrement": True}


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """An aware UTC datetime; a naive one is taken to be UTC already."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Always timezone-aware UTC in Python; timestamptz on PostgreSQL, UTC text on SQLite."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = as_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return as_utc(value)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        Index("uq_users_username_lower", func.lower(text("username")), unique=True),
        NEVER_REUSE_IDS,
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(50))
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default="user", server_default="user")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


@functools.lru_cache(maxsize=64)
def _rendered(content: str) -> Rendered:
    return render(content)


def _inserted(context: DefaultExecutionContext, column: str) -> Any:
    # The row being inserted (one row per execution: inserts here never use multi-VALUES).
    parameters = context.current_parameters
    assert parameters is not None
    return parameters[column]


# What an insert that leaves the derived columns out gets (a bulk seed, a test's own rows): the
# service itself always sets them (crud.create_post), and gives taken slugs their `-N`.
def _default_slug(context: DefaultExecutionContext) -> str:
    return slug_from_title(_inserted(context, "title"))


def _default_html(context: DefaultExecutionContext) -> str:
    return _rendered(_inserted(context, "content")).html


def _default_excerpt(context: DefaultExecutionContext) -> str:
    return _rendered(_inserted(context, "content")).excerpt


def _default_reading_time(context: DefaultExecutionContext) -> int:
    return _rendered(_inserted(context, "content")).reading_time_minutes


class Post(Base):
    __tablename__ = "posts"
    __table_args__ = (
        Index("uq_posts_title_lower", func.lower(text("title")), unique=True),
        Index("ix_posts_published_created", "published", "created_at", "id"),
        Index("ix_posts_published_updated", "published", "updated_at", "id"),
        Index("ix_posts_published_title", "published", "title", "id"),
        Index("ix_posts_author_created", "author_id", "created_at", "id"),
        Index("uq_posts_slug", "slug", unique=True),
        Index("ix_posts_search", "search_document", postgresql_using="gin").ddl_if(
            dialect="postgresql"
        ),
        NEVER_REUSE_IDS,
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str] = mapped_column(String(255))
    content: Mapped[str] = mapped_column(Text)
    # Stored lower-case in the `[a-z0-9]` groups form, so the unique index is case-insensitive.
    slug: Mapped[str] = mapped_column(String(80), default=_default_slug, server_default="")
    # Derived from `content` when the post is written (rendering.render), never per read.
    content_html: Mapped[str] = mapped_column(Text, default=_default_html, server_default="")
    excerpt: Mapped[str] = mapped_column(Text, default=_default_excerpt, server_default="")
    reading_time_minutes: Mapped[int] = mapped_column(
        Integer, default=_default_reading_time, server_default="1"
    )
    # The post's tag names, sorted, joined by single spaces (a name has none): what a read shows,
    # without a join. post_tags holds the same names as rows, for filtering and counting; both
    # are written in the same transaction.
    tags: Mapped[str] = mapped_column(Text, default="", server_default="")
    published: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # PostgreSQL only (migration 0004; alembic/env.py leaves it out on SQLite, which searches
    # its FTS5 table): the full-text document, computed and stored by the database on each
    # write, so a search filters on a stored value instead of computing it for every row.
    search_document: Mapped[str | None] = mapped_column(
        TSVECTOR, Computed(text(POST_SEARCH_DOCUMENT), persisted=True), deferred=True
    )
    # Not fetched back after an ORM insert or update (it would be, by RETURNING, and it does
    # not exist on SQLite); nothing reads it, searches only filter on it.
    __mapper_args__ = MappingProxyType({"eager_defaults": False})

    owner: Mapped[User] = relationship(lazy="joined", innerjoin=True)

    @property
    def author(self) -> str:
        """The author's username, as the API shows it."""
        return self.owner.username


class PostTag(Base):
    """One tag of one post: what `?tag=` filters and `GET /tags` counts go through."""

    __tablename__ = "post_tags"
    __table_args__ = (Index("ix_post_tags_tag_post", "tag", "post_id"),)

    post_id: Mapped[int] = mapped_column(
        ForeignKey("posts.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(30), primary_key=True)


class Comment(Base):
    __tablename__ = "comments"
    __table_args__ = (
        Index("ix_comments_post_created", "post_id", "created_at", "id"),
        NEVER_REUSE_IDS,
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    post_id: Mapped[int] = mapped_column(ForeignKey("posts.id", ondelete="CASCADE"))
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    text: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    owner: Mapped[User] = relationship(lazy="joined", innerjoin=True)

    @property
    def author(self) -> str:
        """The author's username, as the API shows it."""
        return self.owner.username


class IdempotencyRecord(Base):
    """The first final answer to a request sent with an Idempotency-Key, kept for replays."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        UniqueConstraint("user_id", "endpoint", "key", name="uq_idempotency_keys_scope"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    endpoint: Mapped[str] = mapped_column(String(255))
    key: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    body: Mapped[str] = mapped_column(Text)
    location: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
