"""database.Database's driver path on PostgreSQL: fair queueing for pooled connections."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from conftest import TEST_DATABASE_URL, TEST_SECRET, need_services
from sqlalchemy import func, select

from config import Settings
from database import Database

QUERY_SECONDS = 0.05
SLOW_QUERY = select(func.pg_sleep(QUERY_SECONDS))


@pytest.fixture
async def one_connection_database() -> Any:
    need_services("TEST_DATABASE_URL")
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=TEST_DATABASE_URL,
        secret_key=TEST_SECRET,
        db_pool_size=1,
        db_max_overflow=0,
    )
    database = Database(settings)
    yield database
    await database.dispose()


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
