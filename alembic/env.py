"""Alembic environment: migrates the database named by DATABASE_URL (or the caller's URL)."""

import asyncio
from collections.abc import Callable
from logging.config import fileConfig
from typing import Any

from sqlalchemy import pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from alembic import context
from config import Settings, normalize_database_url
from database import POOLER_CONNECT_ARGS
from models import Base

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def database_url() -> str:
    url = config.attributes.get("database_url")
    return normalize_database_url(url) if url else Settings().database_url


# Each backend's full-text search machinery: SQLite's FTS5 tables (kept by triggers, not
# models) and, on PostgreSQL only, posts.search_document with its GIN index.
SQLITE_ONLY_TABLE_PREFIX = "posts_fts"
POSTGRES_ONLY = {("column", "search_document"), ("index", "ix_posts_search")}


def include_object_for(dialect: str) -> Callable[[Any, str | None, str, bool, Any], bool]:
    """What Alembic's comparison looks at on this backend."""

    def include_object(
        obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
    ) -> bool:
        if type_ == "table" and name is not None and name.startswith(SQLITE_ONLY_TABLE_PREFIX):
            return False
        return dialect == "postgresql" or (type_, name) not in POSTGRES_ONLY

    return include_object


# Held for the migration's transaction on PostgreSQL: processes migrating at once (workers
# started with MIGRATE_ON_START, two `manage.py migrate`) take turns, and the later ones find the
# schema current. Transaction-scoped, so it also holds behind PgBouncer in transaction mode.
MIGRATION_LOCK = text("SELECT pg_advisory_xact_lock(3141592653589793)")


def do_run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_object=include_object_for(connection.dialect.name),
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(MIGRATION_LOCK)  # before Alembic reads the current revision
        context.run_migrations()


async def run_async_migrations() -> None:
    pooled = Settings().database_pooler == "pgbouncer"  # through PgBouncer: nothing named
    engine = create_async_engine(
        database_url(),
        poolclass=pool.NullPool,
        connect_args=POOLER_CONNECT_ARGS if pooled else {},
    )
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await engine.dispose()


def run_migrations_offline() -> None:
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_async_migrations())
