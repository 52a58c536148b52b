"""Bounds on live-update sockets: how many one user and one IP may hold open, and how many
messages one user may send a second on all of them together.

With Redis, open sockets are counted across workers: each socket holds a lease (a member of a
sorted set per user and per IP, scored by its expiry on Redis's clock). The worker holding it
renews its leases every LEASE_SECONDS / 3 and removes them when the socket closes, so a worker
that crashes leaks nothing for longer than LEASE_SECONDS. Without Redis, and during an outage,
the sockets this process holds are counted. The message rate is a moving window per user,
in Redis (the rate limiter's script) or in process memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections import Counter, deque
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from errors import TooManySockets
from ratelimit import MOVING_WINDOW, one_slot
from redis_backend import RedisBackend

logger = logging.getLogger("blog.realtime")

COMPONENT = "realtime"
KEY_PREFIX = "blog:ws"
LEASE_SECONDS = 30.0
# A refused handshake's Retry-After: a closed socket frees its place at once, but when is not
# known; a crashed worker's sockets leave the counts within LEASE_SECONDS.
RETRY_AFTER_SECONDS = 10
MESSAGES_PER_SECOND = 5

# KEYS: the sorted sets to enter (the IP's, then the user's); ARGV: the member, the lease in
# seconds, then each set's limit. Returns 0 when the member entered every set, else the 1-based
# index of the first set that is full (then it entered none).
ACQUIRE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local lease = tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if redis.call('ZCARD', key) >= tonumber(ARGV[2 + i]) then
    return i
  end
end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + lease, ARGV[1])
  redis.call('EXPIRE', key, math.ceil(lease))
end
return 0
"""

# KEYS: sorted sets; ARGV: the lease, then the member to renew in each set (re-added if Redis
# lost it, e.g. after a restart).
RENEW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local lease = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + lease, ARGV[i + 1])
  redis.call('EXPIRE', key, math.ceil(lease))
end
return 0
"""


@dataclass(frozen=True)
class Lease:
    """One open socket's place in the counts of its IP and (when signed in) its user."""

    member: str
    keys: tuple[str, ...]  # the IP's count, then the user's
    limits: tuple[int, ...]  # each count's limit


class SocketLimits:
    """Admits a socket only under its user's and its IP's limits; limits messages per user."""

    def __init__(
        self,
        redis: RedisBackend | None,
        per_user: int,
        per_ip: int,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self.redis = redis
        self.per_user = per_user
        self.per_ip = per_ip
        self.lease_seconds = lease_seconds
        self.held: dict[str, Lease] = {}  # this process's leases, by member
        self.counts: Counter[str] = Counter()  # this process's sockets, by count key
        self._members = (f"{os.getpid()}-{os.urandom(4).hex()}-{n}" for n in itertools.count())
        self._sent_at: dict[int, deque[float]] = {}
        self._scripts: dict[str, AsyncScript] = {}
        self._renewer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.redis is not None:
            self._renewer = asyncio.create_task(self._renew_forever(), name="socket-leases")

    async def stop(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer

    async def acquire(self, user_id: int | None, ip: str) -> Lease:
        """A lease for a new socket; TooManySockets (429) when the user or the IP holds enough."""
        keys, limits = [f"{KEY_PREFIX}:sockets:ip:{ip}"], [self.per_ip]
        if user_id is not None:
            keys.append(f"{KEY_PREFIX}:sockets:user:{user_id}")
            limits.append(self.per_user)
        lease = Lease(next(self._members), tuple(keys), tuple(limits))
        full = await self._enter(lease)
        if full:
            what = "this address" if full == 1 else "this user"
            raise TooManySockets(
                f"Too many open live-update sockets for {what} (limit {limits[full - 1]})",
                RETRY_AFTER_SECONDS,
            )
        self.held[lease.member] = lease
        self.counts.update(lease.keys)
        return lease

    async def _enter(self, lease: Lease) -> int:
        """0 when the lease fits every count, else the 1-based index of the first full one."""

        async def local() -> int:
            for index, (key, limit) in enumerate(zip(lease.keys, lease.limits, strict=True), 1):
                if self.counts[key] >= limit:
                    return index
            return 0

        if self.redis is None:
            return await local()
        script = self._script(ACQUIRE)
        args: list[str | float] = [lease.member, self.lease_seconds, *lease.limits]

        async def shared(_client: Redis) -> int:
            assert self.redis is not None
            return int(await self.redis.run_script(script, lease.keys, args))

        return await self.redis.call(COMPONENT, shared, local)

    async def release(self, lease: Lease) -> None:
        """The socket closed: its place is free at once (on Redis, when it is reachable)."""
        if self.held.pop(lease.member, None) is None:
            return
        self.counts.subtract(lease.keys)
        for key in lease.keys:
            if self.counts[key] <= 0:
                del self.counts[key]
        if self.redis is None:
            return

        async def shared(client: Redis) -> None:
            async with client.pipeline(transaction=False) as pipe:
                for key in lease.keys:
                    pipe.zrem(key, lease.member)
                await pipe.execute()

        async def local() -> None:
            return None  # unreachable Redis: the lease runs out by itself

        await self.redis.call(COMPONENT, shared, local)

    async def renew(self) -> None:
        """Extend every lease this process holds (re-entering any that Redis lost)."""
        if self.redis is None or not self.held:
            return
        keys: list[str] = []
        members: list[str] = []
        for lease in list(self.held.values()):
            keys += lease.keys
            members += [lease.member] * len(lease.keys)
        script = self._script(RENEW)

        async def shared(_client: Redis) -> None:
            assert self.redis is not None
            await self.redis.run_script(script, keys, [self.lease_seconds, *members])

        async def local() -> None:
            return None

        await self.redis.call(COMPONENT, shared, local, always_try=True)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                await self.renew()
            except Exception:  # never let the renewal task die; the next round tries again
                logger.exception("renewing live-socket leases failed")

    async def allow_message(self, user_id: int) -> bool:
        """One more message from this user, on any socket, within MESSAGES_PER_SECOND."""
        if self.redis is None:
            return self._allow_message_here(user_id)
        script = self._script(MOVING_WINDOW)
        key = f"{KEY_PREFIX}:messages:user:{user_id}"
        args = one_slot(MESSAGES_PER_SECOND, 1, next(self._members))

        async def shared(_client: Redis) -> bool:
            assert self.redis is not None
            granted, _remaining, _reset = await self.redis.run_script(script, [key], args)
            return bool(granted == 1)

        async def local() -> bool:
            return self._allow_message_here(user_id)

        return await self.redis.call(COMPONENT, shared, local)

    def _allow_message_here(self, user_id: int) -> bool:
        now = time.monotonic()
        sent_at = self._sent_at.get(user_id)
        if sent_at is None:
            if len(self._sent_at) > 10_000:  # users idle for a second are forgotten
                self._sent_at = {u: d for u, d in self._sent_at.items() if now - d[-1] < 1.0}
            sent_at = self._sent_at[user_id] = deque(maxlen=MESSAGES_PER_SECOND)
        if len(sent_at) == sent_at.maxlen and now - sent_at[0] < 1.0:
            return False
        sent_at.append(now)
        return True

    def _script(self, source: str) -> AsyncScript:
        assert self.redis is not None
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self.redis.client.register_script(source)
        return script
