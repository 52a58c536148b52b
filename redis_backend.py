"""The shared Redis connection and its outage bookkeeping.

Every Redis-backed mechanism (cache, rate limits, fan-out) calls Redis through `RedisBackend` so
that an outage is noticed once, logged once, counted, and retried on its own after a pause:
while Redis is down the mechanisms use their in-process fallback instead of failing requests.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT

logger = logging.getLogger("blog.redis")

T = TypeVar("T")

RETRY_AFTER_SECONDS = 2.0
SOCKET_TIMEOUT_SECONDS = 0.5
MAX_IDLE_CONNECTIONS = 64  # kept for the hot path; more concurrent commands open (then close) more

FallbackListener = Callable[[str], None]


class RedisBackend:
    """One Redis client per process plus whether it is believed to be reachable."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client: Redis = Redis.from_url(
            url,
            socket_timeout=SOCKET_TIMEOUT_SECONDS,
            socket_connect_timeout=SOCKET_TIMEOUT_SECONDS,
            health_check_interval=10,
            # After Redis restarts, each pooled connection fails once ("Connection closed by
            # server"); one immediate retry on a fresh connection keeps that from looking like
            # a new outage. A real outage still fails at once (connection refused).
            retry=Retry(NoBackoff(), 1),
        )
        self._idle: list[AbstractConnection] = []  # execute's own connections, most recent last
        # pipelined(): the commands issued in this turn of the event loop, sent together next turn
        self._batch: list[tuple[tuple[EncodableT, ...], asyncio.Future[Any]]] | None = None
        self._batches: set[asyncio.Task[None]] = set()
        self._down_since: float | None = None
        self._retry_at = 0.0
        self.fallback_listeners: list[FallbackListener] = []

    def channel(self, name: str) -> str:
        """A pub/sub channel name; channels ignore the database number, so it is part of it."""
        db = self.client.connection_pool.connection_kwargs.get("db", 0)
        return f"{name}:db{db}"

    @property
    def available(self) -> bool:
        """False during an outage, until the next retry is due."""
        return self._down_since is None or time.monotonic() >= self._retry_at

    def mark_failed(self, component: str, exc: BaseException) -> None:
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            logger.warning("redis unreachable (%s: %s); using in-process fallbacks", component, exc)
        self._retry_at = now + RETRY_AFTER_SECONDS
        for listener in self.fallback_listeners:
            listener(component)

    def mark_ok(self) -> None:
        if self._down_since is not None:
            logger.warning(
                "redis reachable again after %.1fs; shared mode restored",
                time.monotonic() - self._down_since,
            )
            self._down_since = None

    async def call(
        self,
        component: str,
        operation: Callable[[Redis], Awaitable[T]],
        fallback: Callable[[], Awaitable[T]],
        *,
        always_try: bool = False,
    ) -> T:
        """Run `operation` on Redis, or `fallback` when Redis is (or just went) down.

        `always_try` tries Redis even during an outage (for what must reach it if it can)."""
        if not self.available and not always_try:
            return await fallback()
        try:
            result = await operation(self.client)
        except (RedisError, OSError) as exc:
            self.mark_failed(component, exc)
            return await fallback()
        self.mark_ok()
        return result

    async def execute(self, *args: EncodableT) -> Any:
        """One command on a connection of the hot path's own, answered as Redis sent it.

        The client's pool takes two locks, checks the socket and records metrics on every
        checkout, and the client wraps every command in retries, deprecation checks and
        telemetry hooks: together more CPU time than the round trip itself. The per-request hot
        paths (the rate-limit check, the post cache lookup) send theirs here, on connections
        made like the pool's and kept in a plain list. Like the client it retries once on a
        connection Redis closed (it restarted). A command interrupted halfway (a timeout, a
        cancelled request) leaves its connection disconnected (redis-py does that), so a late
        reply is never read as the next command's; it reconnects when next used."""
        connection = self._idle.pop() if self._idle else self._new_connection()
        try:
            try:
                await connection.send_command(*args)
                return await connection.read_response()
            except RedisConnectionError:
                await connection.disconnect()
                await connection.send_command(*args)
                return await connection.read_response()
        finally:
            if len(self._idle) < MAX_IDLE_CONNECTIONS:
                self._idle.append(connection)
            else:
                await connection.disconnect()

    async def pipelined(self, *args: EncodableT) -> Any:
        """Like `execute`, but every command issued in the same turn of the event loop (the
        requests in flight that reached this point together) goes out in one write on one
        connection and is answered in one read: one round trip, one wake-up and one pair of
        system calls for the lot, like ioredis's auto-pipelining. Each command is still atomic
        on its own (a script stays one script); an error reply fails only its own command."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self._batch is None:
            self._batch = []
            loop.call_soon(self._dispatch)
        self._batch.append((args, future))
        return await future

    def _dispatch(self) -> None:
        batch, self._batch = self._batch or [], None
        task = asyncio.get_running_loop().create_task(self._send_batch(batch))
        self._batches.add(task)  # a task nothing references may be collected mid-flight
        task.add_done_callback(self._batches.discard)

    async def _send_batch(
        self, batch: list[tuple[tuple[EncodableT, ...], asyncio.Future[Any]]]
    ) -> None:
        commands = [args for args, _ in batch]
        connection = self._idle.pop() if self._idle else self._new_connection()
        try:
            try:
                replies = await self._round_trip(connection, commands)
            except RedisConnectionError:  # as `execute`: Redis restarted, one retry
                await connection.disconnect()
                replies = await self._round_trip(connection, commands)
        except BaseException as exc:
            # A command cut off halfway leaves the connection disconnected (see `execute`).
            failure = exc if isinstance(exc, Exception) else RedisConnectionError("cancelled")
            for _, future in batch:
                if not future.done():
                    future.set_exception(failure)
            if not isinstance(exc, Exception):
                raise
        else:
            for (_, future), reply in zip(batch, replies, strict=True):
                if future.done():  # its request was cancelled meanwhile
                    continue
                if isinstance(reply, RedisError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        finally:
            if len(self._idle) < MAX_IDLE_CONNECTIONS:
                self._idle.append(connection)
            else:
                await connection.disconnect()

    @staticmethod
    async def _round_trip(
        connection: AbstractConnection, commands: list[tuple[EncodableT, ...]]
    ) -> list[Any]:
        await connection.send_packed_command(connection.pack_commands(commands))
        replies: list[Any] = []
        try:
            # One deadline for the batch's replies, not a timeout context per reply; a reply
            # cut off by it leaves the connection disconnected (read_response does that).
            async with asyncio.timeout(SOCKET_TIMEOUT_SECONDS):
                for _ in commands:
                    try:
                        replies.append(await connection.read_response(timeout=math.inf))
                    except ResponseError as error:  # read on: the next reply is on its way
                        replies.append(error)
        except (TimeoutError, RedisError) as exc:
            failure = (
                RedisTimeoutError("Timeout reading pipelined replies")
                if isinstance(exc, TimeoutError)
                else exc
            )
            if not replies:
                raise failure from None
            # The replies read stand; the commands whose replies were lost fail.
            replies.extend(failure for _ in range(len(commands) - len(replies)))
        return replies

    def _new_connection(self) -> AbstractConnection:
        """Unconnected, made as the client's pool makes them (URL, timeouts, health checks)."""
        pool = self.client.connection_pool
        connection: AbstractConnection = pool.make_connection()  # type: ignore[no-untyped-call]
        return connection

    async def run_script(
        self,
        script: AsyncScript,
        keys: Sequence[str],
        args: Sequence[EncodableT],
        *,
        pipelined: bool = False,
    ) -> Any:
        """EVALSHA through `execute` (or `pipelined`), loading the script first if Redis does
        not know it."""
        send = self.pipelined if pipelined else self.execute
        try:
            return await send("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            script.sha = await self.client.script_load(script.script)
            return await send("EVALSHA", script.sha, len(keys), *keys, *args)

    async def ping(self) -> bool:
        await self.client.ping()
        return True

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.disconnect()
        await self.client.aclose()
