"""Live updates: sockets per post and the fan-out of events to every worker process.

`LocalHub` delivers to the sockets this process holds. `RedisHub` publishes every event on one
Redis channel and each worker holds a single subscription to it, delivering to its own sockets;
when Redis is down it falls back to local delivery and resubscribes once Redis is back.

A socket is authorised at its handshake and stays so only while its user may still see the
post: each event on a post that is not public (a draft) is sent only after the viewer's current
role has been checked (`Viewers`, at most VIEWER_CHECK_SECONDS old), in the socket's own sender
task so that events keep their order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.client import PubSub
from redis.exceptions import RedisError
from starlette.websockets import WebSocket, WebSocketState

from models import User
from redis_backend import RedisBackend

logger = logging.getLogger("blog.realtime")

CHANNEL = "blog:events"
SEND_QUEUE_SIZE = 64
MAX_MESSAGE_CHARS = 1000
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN = 1013
VIEWER_CHECK_SECONDS = 2.0  # how stale a socket's view of its user's role may be, at most

UserLoader = Callable[[int], Awaitable[User | None]]


class Viewers:
    """Each socket user's current role, read from the database at most once per
    VIEWER_CHECK_SECONDS per user and process, however many sockets ask."""

    def __init__(self, load: UserLoader, max_age: float = VIEWER_CHECK_SECONDS) -> None:
        self.load = load
        self.max_age = max_age
        self._known: dict[int, tuple[float, User | None]] = {}
        self._loading: dict[int, asyncio.Future[User | None]] = {}

    async def current(self, user_id: int) -> User | None:
        """The user as the database has it now (None once deleted), give or take max_age."""
        now = time.monotonic()
        known = self._known.get(user_id)
        if known is not None and now - known[0] < self.max_age:
            return known[1]
        loading = self._loading.get(user_id)
        if loading is None:  # one read for every socket of the user asking meanwhile
            loading = self._loading[user_id] = asyncio.ensure_future(self._read(user_id))
        return await asyncio.shield(loading)  # a closing socket does not cancel the others' read

    async def _read(self, user_id: int) -> User | None:
        try:
            user = await self.load(user_id)
        finally:
            del self._loading[user_id]
        if len(self._known) > 10_000:  # a bound; entries are worth max_age seconds only
            self._known.clear()
        self._known[user_id] = (time.monotonic(), user)
        return user


@dataclass(eq=False)
class LiveSocket:
    """One client socket: who it is and a bounded queue drained by its own sender task."""

    websocket: WebSocket
    post_id: int
    user_id: int | None
    username: str | None
    is_admin: bool
    author_id: int | None = None  # the post's
    post_public: bool = True  # as the last event about the post said
    viewers: Viewers | None = None
    expires_at: float | None = None  # the token's expiry (Unix time)
    queue: asyncio.Queue[tuple[str, Any]] = field(
        default_factory=lambda: asyncio.Queue(maxsize=SEND_QUEUE_SIZE)
    )
    closing: bool = False

    def may_see_draft(self) -> bool:
        return self.is_admin or (self.user_id is not None and self.user_id == self.author_id)

    async def still_may_see_draft(self) -> bool:
        """Whether the user, as the database has it now, may see the post as a draft."""
        if self.user_id is None or self.viewers is None:
            return False
        user = await self.viewers.current(self.user_id)
        if user is None:  # deleted: the socket's token names no one any more
            return False
        self.is_admin = user.role == "admin"
        return self.may_see_draft()

    async def may_still_speak(self) -> bool:
        """The sender, re-checked before its message fans out: an expired token, a deleted
        user or a draft the user may no longer see close the socket (1008) instead."""
        if self.expires_at is not None and time.time() >= self.expires_at:
            self.close_soon(CLOSE_POLICY, "token expired")
            return False
        if self.user_id is None or self.viewers is None:
            return self.user_id is not None
        user = await self.viewers.current(self.user_id)
        if user is None:
            self.close_soon(CLOSE_POLICY, "user no longer exists")
            return False
        self.is_admin = user.role == "admin"
        if not self.post_public and not self.may_see_draft():
            self.lose_sight()
            return False
        return True

    def offer(self, event: dict[str, Any], *, check: bool = False) -> None:
        """Queue an event without waiting; a socket that cannot keep up is closed. With `check`
        the sender re-checks the viewer's right to see the draft before sending it."""
        if self.closing:
            return
        try:
            self.queue.put_nowait(("check" if check else "send", event))
        except asyncio.QueueFull:
            self.close_soon(CLOSE_TRY_AGAIN, "too slow")

    def lose_sight(self) -> None:
        """The viewer may no longer see the post: it is gone for them, and the socket closes."""
        self.offer({"type": "post_deleted", "post_id": self.post_id})
        self.close_soon(CLOSE_POLICY, "post is no longer visible")

    def close_soon(self, code: int, reason: str = "") -> None:
        if self.closing:
            return
        self.closing = True
        with contextlib.suppress(asyncio.QueueEmpty):
            while self.queue.full():
                self.queue.get_nowait()
        self.queue.put_nowait(("close", (code, reason)))

    async def run_sender(self) -> None:
        """Drain the queue onto the socket until told to close or the socket dies."""
        try:
            while True:
                kind, payload = await self.queue.get()
                if kind == "close":
                    code, reason = payload
                    await self.websocket.close(code=code, reason=reason)
                    return
                if kind == "check" and not await self.still_may_see_draft():
                    self.closing = True
                    gone = {"type": "post_deleted", "post_id": self.post_id}
                    await self.websocket.send_text(json.dumps(gone))
                    await self.websocket.close(CLOSE_POLICY, "post is no longer visible")
                    return
                await self.websocket.send_text(json.dumps(payload))
        except Exception:  # the peer went away; the receive loop notices and cleans up
            self.closing = True
            if self.websocket.application_state != WebSocketState.DISCONNECTED:
                with contextlib.suppress(Exception):
                    await self.websocket.close(code=CLOSE_TRY_AGAIN)


class LocalHub:
    """The sockets this process holds, by post, and local delivery of events."""

    def __init__(self, viewers: Viewers | None = None) -> None:
        self.sockets: dict[int, set[LiveSocket]] = {}
        self.going_away = False
        self._emptied = asyncio.Event()
        self.viewers = viewers

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self.going_away = True
        for sockets in list(self.sockets.values()):
            for socket in list(sockets):
                socket.close_soon(CLOSE_GOING_AWAY, "server shutting down")

    async def say_goodbye(self) -> None:
        """At the start of a graceful shutdown: close every socket with 1001 (going away), so
        clients reconnect to another instance, and wait until they have all answered the close
        (the server would otherwise close them with 1012 itself). The caller bounds the wait."""
        await self.stop()
        if self.sockets:
            self._emptied.clear()
            await self._emptied.wait()

    def add(self, socket: LiveSocket) -> None:
        self.sockets.setdefault(socket.post_id, set()).add(socket)
        if self.going_away:
            socket.close_soon(CLOSE_GOING_AWAY, "server shutting down")

    def remove(self, socket: LiveSocket) -> None:
        sockets = self.sockets.get(socket.post_id)
        if sockets is not None:
            sockets.discard(socket)
            if not sockets:
                del self.sockets[socket.post_id]
        if not self.sockets:
            self._emptied.set()

    async def publish(self, post_id: int, event: dict[str, Any]) -> None:
        """Deliver an event to every socket on the post, in every process this hub reaches."""
        self.deliver(post_id, event)

    def deliver(self, post_id: int, event: dict[str, Any]) -> None:
        for socket in list(self.sockets.get(post_id, ())):
            deliver_to(socket, event)


def deliver_to(socket: LiveSocket, event: dict[str, Any]) -> None:
    """One event to one socket, applying what the event means for that socket's viewer."""
    kind = event["type"]
    if kind == "post_deleted":
        socket.offer(event)
        socket.close_soon(CLOSE_NORMAL, "post deleted")
        return
    if kind == "post_updated":
        socket.post_public = bool(event["post"]["published"])
    if socket.post_public:
        socket.offer(event)
    elif not socket.may_see_draft():  # as of the last check: no need to ask the database
        socket.lose_sight()
    else:  # a draft: sent once the viewer's current role says it still may see it
        socket.offer(event, check=True)


class RedisHub(LocalHub):
    """Fan-out through one Redis pub/sub channel; one subscription per worker process."""

    def __init__(self, redis: RedisBackend, viewers: Viewers | None = None) -> None:
        super().__init__(viewers)
        self.redis = redis
        self.channel = redis.channel(CHANNEL)
        self._listener: asyncio.Task[None] | None = None
        self._stopping = False
        self.subscribed = asyncio.Event()

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="realtime-redis-listener")

    async def stop(self) -> None:
        await super().stop()
        self._stopping = True
        listener = self._listener
        # redis-py's get_message can swallow a cancellation; insist until the task is done.
        while listener is not None and not listener.done():
            listener.cancel()
            await asyncio.wait({listener}, timeout=0.5)

    async def publish(self, post_id: int, event: dict[str, Any]) -> None:
        message = json.dumps({"post_id": post_id, "event": event})

        async def shared(client: Any) -> None:
            await client.publish(self.channel, message)

        async def local() -> None:
            self.deliver(post_id, event)

        await self.redis.call("realtime", shared, local)

    async def _listen(self) -> None:
        while not self._stopping:
            pubsub: PubSub = self.redis.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.subscribed.set()
                self.redis.mark_ok()
                while not self._stopping:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._on_message(message)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self.subscribed.clear()
                self.redis.mark_failed("realtime", exc)
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _on_message(self, message: dict[str, Any]) -> None:
        if message.get("type") != "message":
            return
        try:
            payload = json.loads(message["data"])
            self.deliver(int(payload["post_id"]), payload["event"])
        except (ValueError, KeyError, TypeError):
            logger.warning("ignored a malformed fan-out message")


def create_hub(redis: RedisBackend | None, load_user: UserLoader) -> LocalHub:
    """The hub for this configuration: Redis fan-out when Redis is configured."""
    viewers = Viewers(load_user)
    return RedisHub(redis, viewers) if redis is not None else LocalHub(viewers)
