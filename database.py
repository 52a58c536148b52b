"""Engine and session management for both backends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from asyncpg.exceptions import IntegrityConstraintViolationError
from sqlalchemy import event, text
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, IntegrityError, InvalidatePoolError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql import Select
from sqlalchemy.sql.dml import ReturningInsert
from sqlalchemy.util import greenlet_spawn
from starlette.requests import HTTPConnection

from config import Settings, sqlite_path
from errors import DatabaseUnavailable, lost_database


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
    engine = create_async_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_recycle=1800,
        connect_args=POOLER_CONNECT_ARGS if settings.database_pooler == "pgbouncer" else {},
    )
    event.listen(engine.sync_engine, "checkout", _drop_closed_connection)
    return engine


def _unnamed_statement() -> str:
    return ""


# Behind PgBouncer in transaction mode, consecutive transactions of one connection may run on
# different server connections, and PgBouncer 1.18 does not carry prepared statements across:
# a named statement prepared on one is missing on the next (or its name is already taken by
# another client's). So nothing is prepared by name: asyncpg's statement cache is off, and
# SQLAlchemy's statements are unnamed and uncached, which asyncpg then parses again in the same
# message as their execution (Parse, Bind, Execute, Sync), on whichever server connection runs it.
# The cost: a Parse/Describe round trip per statement more (see the README's benchmark figures).
POOLER_CONNECT_ARGS: dict[str, Any] = {
    "statement_cache_size": 0,
    "prepared_statement_cache_size": 0,
    "prepared_statement_name_func": _unnamed_statement,
}


def describe_error(exc: BaseException) -> str:
    """The first line of what went wrong, without SQLAlchemy's statement and links."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    message = str(exc).strip()
    first_line = message.splitlines()[0] if message else ""
    return first_line or type(exc).__name__


def _drop_closed_connection(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """A connection the server closed (a restart) is replaced at checkout, as pool_pre_ping
    would, without pre_ping's three round trips per checkout: asyncpg notices a closed socket by
    itself, so asking costs nothing. The other pooled connections went down with the same server
    and are replaced as well (InvalidatePoolError)."""
    if dbapi_connection.driver_connection.is_closed():
        raise InvalidatePoolError("the database server closed this connection")


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


Row = Mapping[str, Any]
AnySelect = Select[*tuple[Any, ...]]
ReturningWrite = ReturningInsert[*tuple[Any, ...]]


@dataclass(frozen=True)
class DriverStatement:
    """A prebuilt statement compiled for the driver: its SQL, and for each positional argument
    the bind parameter's name and its own value (used when the call gives none)."""

    sql: str
    binds: tuple[tuple[str, Any], ...]

    @classmethod
    def compile(cls, statement: AnySelect | ReturningWrite, dialect: Dialect) -> DriverStatement:
        compiled = statement.compile(dialect=dialect)
        names = compiled.positiontup or ()
        binds = tuple((name, compiled.binds[name].effective_value) for name in names)
        return cls(compiled.string, binds)

    def arguments(self, params: Mapping[str, Any]) -> list[Any]:
        return [params.get(name, value) for name, value in self.binds]


MAX_COMPILED_STATEMENTS = 1024  # statement shapes are few; a bound all the same
KEPT_CONNECTION_SECONDS = 1800.0  # as the pool's pool_recycle: older ones go back to it


class KeptConnections:
    """The engine's pooled connections that the driver path keeps between its statements.

    Checking a connection out of SQLAlchemy's pool and back in runs the pool's machinery on two
    greenlet hops (~23 µs, more than asyncpg spends on the statement itself). The driver path
    keeps up to `keep` of them checked out in a plain list instead and reuses them; the rest go
    back to the pool. `keep` is half the pool's size, so sessions always find the other half.
    A kept connection that the server closed, or older than the pool would keep one, goes back
    to the pool (which replaces it); a connection whose statement failed halfway (cancelled, or
    the database lost) is never kept."""

    def __init__(self, engine: AsyncEngine, keep: int) -> None:
        self.engine = engine
        self.keep = keep
        self._idle: list[tuple[PoolProxiedConnection, float]] = []  # (connection, kept since)

    async def take(self) -> tuple[PoolProxiedConnection, float]:
        while self._idle:
            pooled, since = self._idle.pop()
            driver = pooled.driver_connection
            fresh = time.monotonic() - since < KEPT_CONNECTION_SECONDS
            if fresh and driver is not None and not driver.is_closed():
                return pooled, since
            await greenlet_spawn(pooled.close)  # the pool's checkout replaces a closed one
        try:
            pooled = await self.engine.raw_connection()
        except Exception as exc:  # a new connection could not be made: not wrapped by SQLAlchemy
            if lost_database(exc):
                raise DatabaseUnavailable() from exc
            raise
        return pooled, time.monotonic()

    async def give_back(self, pooled: PoolProxiedConnection, since: float) -> None:
        """A connection whose statement completed (successfully or with a database error)."""
        if len(self._idle) < self.keep:
            self._idle.append((pooled, since))
        else:
            await greenlet_spawn(pooled.close)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for pooled, _ in idle:
            await greenlet_spawn(pooled.close)


class Database:
    """One engine and its session factories, owned by the app for its lifetime."""

    def __init__(self, settings: Settings) -> None:
        self.engine = create_engine(settings)
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)
        self.is_postgres = self.engine.dialect.name == "postgresql"
        # Reads need no transaction: on PostgreSQL autocommit saves BEGIN and ROLLBACK round
        # trips. (SQLite reads already run outside one; changing its isolation level would also
        # reset the IMMEDIATE mode that writers rely on.)
        self.read_engine = (
            self.engine.execution_options(isolation_level="AUTOCOMMIT")
            if self.is_postgres
            else self.engine
        )
        self.read_sessionmaker = async_sessionmaker(self.read_engine, expire_on_commit=False)
        self._driver_sql: dict[AnySelect | ReturningWrite, DriverStatement] = {}  # by identity
        # Driver queries queue here, first come first served, before they take a connection:
        # the pool's own queue lets a newcomer take a connection just handed to a waiter, and a
        # waiter that loses goes to the back, so under load some requests waited seconds.
        self._driver_slots = asyncio.Semaphore(settings.db_pool_size + settings.db_max_overflow)
        self._kept = KeptConnections(self.engine, keep=settings.db_pool_size // 2)

    async def fetch_all(
        self, statement: AnySelect, params: Mapping[str, Any] | None = None
    ) -> list[Row]:
        """The rows of a read-only Core statement, as mappings, without ORM or a transaction.

        For the hot reads, with statements built once (module constants, or one per query
        shape) whose values are named bind parameters. On PostgreSQL the statement runs straight
        on the asyncpg connection (see `_driver_fetch`)."""
        if not self.is_postgres:
            async with self.read_engine.connect() as connection:
                result = await connection.execute(statement, params)
                return [dict(row) for row in result.mappings()]
        return await self._driver_fetch(statement, params)

    async def write_returning(
        self, statement: ReturningWrite, params: Mapping[str, Any] | None = None
    ) -> list[Row]:
        """The RETURNING rows of one INSERT, committed on its own.

        On PostgreSQL a single statement in autocommit is its own transaction: one round trip
        where a session would add BEGIN and COMMIT. A constraint violation raises SQLAlchemy's
        IntegrityError on both backends."""
        if not self.is_postgres:
            async with self.engine.begin() as connection:
                result = await connection.execute(statement, params)
                return [dict(row) for row in result.mappings()]
        return await self._driver_fetch(statement, params)

    async def _driver_fetch(
        self, statement: AnySelect | ReturningWrite, params: Mapping[str, Any] | None
    ) -> list[Row]:
        """Run a prebuilt statement on the asyncpg connection of a pool checkout:
        compiled once per statement object, prepared by asyncpg's statement cache, skipping
        SQLAlchemy's per-execution and result machinery (several times the cost of the query
        itself). Values go to asyncpg as they are (no bind processors: pass aware datetimes)
        and come back as it decodes them (timestamptz as aware UTC datetimes)."""
        plan = self._driver_sql.get(statement)
        if plan is None:
            if len(self._driver_sql) >= MAX_COMPILED_STATEMENTS:
                self._driver_sql.clear()
            plan = self._driver_sql[statement] = DriverStatement.compile(
                statement, self.engine.dialect
            )
        arguments = plan.arguments(params or {})
        async with self._driver_slots:
            return await self._fetch_on_pooled_connection(plan, arguments)

    async def _fetch_on_pooled_connection(
        self, plan: DriverStatement, arguments: list[Any]
    ) -> list[Row]:
        # The pool's connection itself, not a Connection around it (half the cost of the fetch
        # again); asyncpg runs each statement in its own transaction, as autocommit would.
        pooled, since = await self._kept.take()
        driver = pooled.driver_connection
        assert driver is not None
        try:
            records = await driver.fetch(plan.sql, *arguments)
        except IntegrityConstraintViolationError as exc:
            await self._kept.give_back(pooled, since)
            raise IntegrityError(plan.sql, arguments, exc) from exc
        except BaseException as exc:
            if isinstance(exc, Exception) and not lost_database(exc):
                await self._kept.give_back(pooled, since)  # e.g. a query error: still usable
                raise
            # Lost, or cut off halfway (a cancelled request): its state is unknown.
            await greenlet_spawn(pooled.invalidate, exc if isinstance(exc, Exception) else None)
            if isinstance(exc, Exception):
                raise DatabaseUnavailable() from exc
            raise
        await self._kept.give_back(pooled, since)
        return [dict(record.items()) for record in records]

    async def ping(self) -> None:
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self._kept.close()
        await self.engine.dispose()


async def get_db(connection: HTTPConnection) -> AsyncIterator[AsyncSession]:
    """A session per request (or WebSocket), closed when the handler is done; GET and HEAD
    (which never write) get one without a transaction (Database.read_sessionmaker)."""
    database: Database = connection.app.state.database
    read_only = connection.scope.get("method") in ("GET", "HEAD")
    sessionmaker = database.read_sessionmaker if read_only else database.sessionmaker
    async with sessionmaker() as session:
        yield session
