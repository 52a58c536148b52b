"""database.Database's driver path on PostgreSQL: fair queueing for pooled connections, and the
connections it keeps between statements."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from conftest import TEST_DATABASE_URL, TEST_SECRET, need_services
from sqlalchemy import event, func, select, text

from config import Settings
from database import Database

QUERY_SECONDS = 0.05
SLOW_QUERY = select(func.pg_sleep(QUERY_SECONDS))


@asynccontextmanager
async def database_with_pool(pool_size: int) -> AsyncIterator[Database]:
    """A Database on the test PostgreSQL with `pool_size` connections and no overflow."""
    need_services("TEST_DATABASE_URL")
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=TEST_DATABASE_URL,
        secret_key=TEST_SECRET,
        db_pool_size=pool_size,
        db_max_overflow=0,
    )
    database = Database(settings)
    try:
        yield database
    finally:
        await database.dispose()


@pytest.fixture
async def one_connection_database() -> AsyncIterator[Database]:
    async with database_with_pool(1) as database:
        yield database


async def test_a_request_arriving_late_is_not_starved_by_back_to_back_queries(
    one_connection_database: Database,
) -> None:
    """Three callers run query after query on a one-connection pool; one more arrives later.

    The pool's own queue would hand the connection a caller frees to that caller's next query
    (it asks before the waiter that was woken runs), so the late caller could wait until the
    others are done (~1.8 s); first come, first served, it waits for about three queries."""
    database = one_connection_database
    stop = asyncio.Event()

    async def back_to_back() -> None:
        for _ in range(30):
            if stop.is_set():
                return
            await database.fetch_all(SLOW_QUERY)

    busy = [asyncio.create_task(back_to_back()) for _ in range(3)]
    await asyncio.sleep(5 * QUERY_SECONDS)
    started = time.perf_counter()
    await database.fetch_all(SLOW_QUERY)
    waited = time.perf_counter() - started
    stop.set()
    await asyncio.gather(*busy)
    assert waited < 12 * QUERY_SECONDS, waited


@pytest.fixture
async def two_connection_database() -> AsyncIterator[Database]:
    async with database_with_pool(2) as database:
        yield database


BACKEND_PID = select(func.pg_backend_pid().label("pid"))


def count_checkouts(database: Database) -> list[int]:
    checkouts = [0]

    def checked_out(*_: Any) -> None:
        checkouts[0] += 1

    event.listen(database.engine.sync_engine.pool, "checkout", checked_out)
    return checkouts


async def test_the_driver_path_keeps_its_connection_between_statements(
    two_connection_database: Database,
) -> None:
    database = two_connection_database
    checkouts = count_checkouts(database)
    pids = {(await database.fetch_all(BACKEND_PID))[0]["pid"] for _ in range(20)}
    assert checkouts[0] == 1, "one checkout from the pool, then the kept connection"
    assert len(pids) == 1
    # half the pool is kept at most: sessions find the other half at once
    await asyncio.gather(*(database.fetch_all(SLOW_QUERY) for _ in range(2)))
    async with database.sessionmaker() as session:
        started = time.perf_counter()
        assert (await session.execute(text("SELECT 1"))).scalar() == 1
        assert time.perf_counter() - started < 1.0


async def test_a_connection_cut_off_halfway_is_not_kept(two_connection_database: Database) -> None:
    database = two_connection_database
    first = (await database.fetch_all(BACKEND_PID))[0]["pid"]
    slow = asyncio.create_task(database.fetch_all(select(func.pg_sleep(5))))
    await asyncio.sleep(0.2)
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    rows = await database.fetch_all(select(func.pg_backend_pid().label("pid"), text("41 + 1 AS n")))
    assert rows[0]["n"] == 42
    assert rows[0]["pid"] != first, "the cancelled statement's connection was dropped"


async def test_a_kept_connection_the_server_closed_is_replaced(
    two_connection_database: Database,
) -> None:
    database = two_connection_database
    pid = (await database.fetch_all(BACKEND_PID))[0]["pid"]
    async with database.sessionmaker() as session:  # the pool's other connection
        await session.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    for _ in range(50):  # the kept connection notices the server closed it
        await asyncio.sleep(0.02)
        kept = database._kept._idle[0][0].driver_connection
        if kept is None or kept.is_closed():
            break
    assert (await database.fetch_all(BACKEND_PID))[0]["pid"] != pid
