"""Rate-limit slots taken a few at a time (rate_leases.py): the leasing rules with a scripted
window, then the real window script in Redis, where no number of apps sharing it admits past
the limit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio
from fastapi import FastAPI

from config import Settings
from main import create_app
from rate_leases import Admission, Grant, SlotLeases, hold_seconds, lease_ceiling


class ScriptedWindow:
    """A shared window of `limit` slots that counts the asks made of it."""

    def __init__(self, limit: int, delay: float = 0.0, reset_in: float = 30.0) -> None:
        self.free = limit
        self.delay = delay
        self.reset_in = reset_in
        self.asks: list[int] = []

    async def ask(self, wanted: int) -> Grant:
        self.asks.append(wanted)
        await asyncio.sleep(self.delay)
        granted = min(wanted, self.free)
        self.free -= granted
        return Grant(granted, self.free, self.reset_in)


def test_lease_sizes() -> None:
    assert [lease_ceiling(n) for n in (1, 10, 99, 100, 300, 799, 800, 20_000)] == [
        *(1, 1, 1, 2, 6, 15, 16, 16)
    ]
    assert hold_seconds(1) == 0.1
    assert hold_seconds(60) == hold_seconds(3600) == 1.0


async def test_one_request_at_a_time_takes_one_slot_at_a_time() -> None:
    leases, window = SlotLeases(), ScriptedWindow(limit=300)
    admissions = [await leases.take("ip:a", 6, 1.0, window.ask) for _ in range(5)]
    assert window.asks == [1, 1, 1, 1, 1]  # nothing kept that could go unused
    assert [a.remaining for a in admissions] == [299, 298, 297, 296, 295]
    assert window.free == 295


async def test_requests_that_queue_up_size_the_next_ask() -> None:
    leases, window = SlotLeases(), ScriptedWindow(limit=300, delay=0.01)
    first = await asyncio.gather(*(leases.take("ip:a", 6, 1.0, window.ask) for _ in range(10)))
    assert all(a.allowed for a in first)
    # the first ask wanted one; nine queued behind it, so the next ones want six (the ceiling)
    assert window.asks[0] == 1 and set(window.asks[1:]) == {6}
    taken = 300 - window.free
    assert taken - 10 < 6, "at most one lease's slots are kept unused"
    # the kept slots are handed out without asking, their count shown as free
    asks = len(window.asks)
    kept = taken - 10
    more = [await leases.take("ip:a", 6, 1.0, window.ask) for _ in range(kept)]
    assert len(window.asks) == asks
    assert [a.remaining for a in more] == [window.free + n for n in range(kept - 1, -1, -1)]


async def test_kept_slots_are_dropped_after_their_hold() -> None:
    leases, window = SlotLeases(), ScriptedWindow(limit=300, delay=0.01)
    await asyncio.gather(*(leases.take("ip:a", 6, 0.05, window.ask) for _ in range(4)))
    asks = len(window.asks)
    await asyncio.sleep(0.06)
    await leases.take("ip:a", 6, 0.05, window.ask)
    assert len(window.asks) == asks + 1, "a slot past its hold is never handed out"


async def test_a_refused_client_is_refused_here_until_the_window_frees() -> None:
    leases, window = SlotLeases(), ScriptedWindow(limit=2, reset_in=0.1)
    outcomes = [await leases.take("ip:a", 1, 1.0, window.ask) for _ in range(5)]
    assert [a.allowed for a in outcomes] == [True, True, False, False, False]
    assert len(window.asks) == 3, "one ask found the window full; the refusals after it are local"
    assert outcomes[-1] == Admission(False, 0, pytest.approx(0.1, abs=0.05))
    await asyncio.sleep(0.11)
    window.free = 1  # the oldest slot left the window
    assert (await leases.take("ip:a", 1, 1.0, window.ask)).allowed
    assert len(window.asks) == 4


async def test_clients_lease_apart() -> None:
    leases, window = SlotLeases(), ScriptedWindow(limit=300, delay=0.01)
    await asyncio.gather(*(leases.take("ip:a", 6, 1.0, window.ask) for _ in range(8)))
    asks = len(window.asks)
    await leases.take("ip:b", 6, 1.0, window.ask)
    assert len(window.asks) == asks + 1 and window.asks[-1] == 1


async def test_a_failed_ask_wakes_the_queue() -> None:
    leases = SlotLeases()
    calls = 0

    async def failing(_wanted: int) -> Grant:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        raise ConnectionError("redis went away")

    results = await asyncio.gather(
        *(leases.take("ip:a", 6, 1.0, failing) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(result, ConnectionError) for result in results)
    assert calls == 3, "each waiter asked in turn; none was left waiting"


# --- the window script in Redis, through the service ------------------------------------------


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"rate_limit_read": "400/minute"}  # slots taken up to 8 at a time


@pytest.fixture
async def second_app(settings: Settings) -> AsyncIterator[FastAPI]:
    """Another worker on the same database and Redis."""
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


async def evalsha_calls(url: str) -> int:
    client = redis.asyncio.Redis.from_url(url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_busy_clients_never_pass_the_limit_across_workers(
    app: FastAPI, second_app: FastAPI, redis_url: str | None
) -> None:
    before = await evalsha_calls(redis_url) if redis_url else 0
    statuses: list[int] = []
    remaining: list[int] = []

    async def burst(application: FastAPI) -> None:
        transport = httpx.ASGITransport(app=application, client=("10.1.2.3", 123))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:

            async def one() -> None:
                response = await http.get("/tags")
                statuses.append(response.status_code)
                if response.status_code == 200:
                    remaining.append(int(response.headers["X-RateLimit-Remaining"]))

            await asyncio.gather(*(one() for _ in range(300)))

    await asyncio.gather(burst(app), burst(second_app))
    admitted = statuses.count(200)
    assert statuses.count(429) == 600 - admitted
    if redis_url is None:  # one window per process: each admits its own 300
        assert admitted == 600
        return
    assert 400 - 2 * 8 < admitted <= 400, "exact: never past the shared limit"
    assert all(0 <= left < 400 for left in remaining)
    asks = await evalsha_calls(redis_url) - before
    assert asks < admitted / 2, f"{asks} asks for {admitted} admitted requests"


@pytest.mark.parametrize("settings_overrides", [{"rate_limit_read": "100/minute"}])
async def test_one_request_at_a_time_gets_the_whole_limit(client: httpx.AsyncClient) -> None:
    responses = [await client.get("/tags") for _ in range(102)]
    assert [r.status_code for r in responses] == [200] * 100 + [429] * 2
    remaining = [int(r.headers["X-RateLimit-Remaining"]) for r in responses[:100]]
    assert remaining == list(range(99, -1, -1))
