"""Shared rate-limit slots taken from Redis a few at a time (ratelimit.py's moving windows).

Checking every request against its client's window in Redis costs a round trip (and a script
run on Redis) per request. Instead, a worker asks the window for as many slots as its client
has recently been asking for at once, hands the first to the request at hand and keeps the rest
for that client's next requests, for a short while (`hold`). It stays exact, never admitting a
request that the window would refuse, because:

- the window script records the first slot at Redis's `now` and the others at `now + hold`:
  a kept slot is counted from before it can be used until `hold + window` later;
- a worker hands a kept slot out only until `sent + hold`, `sent` being when it asked (before
  Redis's `now`), so never after the time it was recorded at; what is left then is dropped and
  stays counted in the window until it leaves it;
- it asks for the number of requests of that client that queued up behind the previous ask,
  at most `limit // 50` (and 16): a client sending one request at a time takes one slot at a
  time, exactly as without leasing, and so does every limit under 100 a window. At most that
  many slots go unused at the end of a burst (2 % of the limit), which only ever refuses early;
- a refused client is refused here, without asking Redis, until the window frees its oldest
  slot (no slot can free before that).

`X-RateLimit-Remaining` counts the slots this worker keeps as free; other workers' takings show
at this worker's next ask.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

MAX_LEASE = 16
LEASE_FRACTION = 50  # a lease is at most this fraction of the limit
MAX_HOLD_SECONDS = 1.0
MAX_CLIENTS = 10_000  # leases kept per worker; ones no longer usable are dropped past it


def lease_ceiling(limit: int) -> int:
    """The most slots taken at once for a limit of `limit` requests a window."""
    return max(1, min(MAX_LEASE, limit // LEASE_FRACTION))


def hold_seconds(window_seconds: int) -> float:
    """How long kept slots may be handed out: a tenth of the window, at most a second."""
    return min(MAX_HOLD_SECONDS, window_seconds / 10)


@dataclass(frozen=True)
class Grant:
    """The window's answer to an ask: slots granted (0: refused), slots left free in the window
    after them, and seconds until its oldest slot leaves it."""

    granted: int
    remaining: int
    reset_in: float


@dataclass(frozen=True)
class Admission:
    """One request's outcome: admitted or not, free slots left, seconds until a slot frees."""

    allowed: bool
    remaining: int
    reset_in: float


Ask = Callable[[int], Awaitable[Grant]]  # take up to n slots from the shared window


@dataclass
class _Lease:
    slots: int = 0  # kept slots not handed out yet
    usable_until: float = 0.0  # event-loop time
    remaining: int = 0  # the window's free slots beyond the kept ones, at the last ask
    reset_at: float = 0.0
    refused_until: float = 0.0
    demand: int = 1  # requests that wanted a slot during the last ask, itself included
    flight: asyncio.Event | None = None  # set when the ask in flight has been answered
    waiting: int = 0

    def active(self, now: float) -> bool:
        return self.flight is not None or now < max(self.usable_until, self.refused_until)


class SlotLeases:
    """The slots a worker keeps per client key (one instance per limiter)."""

    def __init__(self) -> None:
        self._leases: dict[str, _Lease] = {}

    async def take(self, key: str, ceiling: int, hold: float, ask: Ask) -> Admission:
        """A slot of `key`'s window for one request: a kept one, else from `ask`."""
        loop = asyncio.get_running_loop()
        lease = self._lease(key, loop.time())
        while True:
            now = loop.time()
            if lease.slots and now < lease.usable_until:
                lease.slots -= 1
                return Admission(True, lease.remaining + lease.slots, lease.reset_at - now)
            if now < lease.refused_until:
                return Admission(False, 0, lease.refused_until - now)
            if lease.flight is None:
                break
            lease.waiting += 1
            await lease.flight.wait()  # an Event: a waiter cancelled leaves the others be
        lease.slots = 0  # none left, or past their time
        flight = lease.flight = asyncio.Event()
        lease.waiting = 0
        sent = loop.time()
        try:
            grant = await ask(min(ceiling, lease.demand))
        finally:
            lease.demand = lease.waiting + 1
            lease.flight = None
            flight.set()
        if grant.granted < 1:
            lease.refused_until = sent + grant.reset_in
            return Admission(False, 0, grant.reset_in)
        lease.slots = grant.granted - 1
        lease.usable_until = sent + hold
        lease.remaining = grant.remaining
        lease.reset_at = sent + grant.reset_in
        return Admission(True, grant.remaining + lease.slots, grant.reset_in)

    def _lease(self, key: str, now: float) -> _Lease:
        lease = self._leases.get(key)
        if lease is None:
            if len(self._leases) >= MAX_CLIENTS:
                self._leases = {k: v for k, v in self._leases.items() if v.active(now)}
            lease = self._leases[key] = _Lease()
        return lease
