"""Engine and session management for both backends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from starlette.requests import HTTPConnection

from config import Settings, sqlite_path


def create_engine(settings: Settings) -> AsyncEngine:
    """An engine for the configured database, tuned for its backend."""
    if settings.is_sqlite:
        db_file = sqlite_path(settings.database_url)
        if db_file is not None:
            db_file.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level="IMMEDIATE": reads run without a transaction (never blocking under
        # WAL), and the first INSERT/UPDATE/DELETE takes the write lock at once, so concurrent
        # writers queue on busy_timeout instead of failing on a lock upgrade.
        engine = create_async_engine(
            settings.database_url,
            connect_args={"timeout": 30, "isolation_level": "IMMEDIATE"},
        )
        event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
        return engine
    return create_async_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_pre_ping=True,
        pool_recycle=1800,
    )


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    for pragma in (
        "PRAGMA journal_mode=WAL",
        "PRAGMA synchronous=NORMAL",
        "PRAGMA foreign_keys=ON",
        "PRAGMA busy_timeout=30000",
    ):
        cursor.execute(pragma)
    cursor.close()


class Database:
    """One engine and its session factory, owned by the app for its lifetime."""

    def __init__(self, settings: Settings) -> None:
        self.engine = create_engine(settings)
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)

    async def ping(self) -> None:
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()


async def get_db(connection: HTTPConnection) -> AsyncIterator[AsyncSession]:
    """A session per request (or WebSocket), closed when the handler is done."""
    database: Database = connection.app.state.database
    async with database.sessionmaker() as session:
        yield session
