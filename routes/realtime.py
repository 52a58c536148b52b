"""WebSocket live updates for one post."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

import crud
import observability
from errors import InvalidToken
from models import User
from ratelimit import bearer_token, peer_ip
from realtime import CLOSE_POLICY, MAX_MESSAGE_CHARS, LiveSocket, LocalHub
from schemas import ObjectId
from security import decode_access_token_until
from socket_limits import SocketLimits

logger = logging.getLogger("blog.realtime")

router = APIRouter()


async def _viewer(websocket: WebSocket, token: str | None) -> tuple[User | None, float | None]:
    """The token's user and when the token expires; (None, None) without a token."""
    if token is None:
        return None, None
    secret = websocket.app.state.settings.jwt_secret
    user_id, expires_at = decode_access_token_until(token, secret)
    user = await crud.get_user(websocket.app.state.database, user_id)
    if user is None:
        raise InvalidToken()
    return user, expires_at


@router.websocket("/ws/posts/{post_id}")
async def post_updates(websocket: WebSocket, post_id: ObjectId, token: str | None = None) -> None:
    """Live events for a post; signed-in sockets may also send short messages.

    The token comes from `?token=` (browsers cannot set headers on a WebSocket) or, for other
    clients, from `Authorization: Bearer`. A refusal is an HTTP answer in the error envelope at
    the handshake: 401 for a bad token, 404 for a post the caller may not see, 422 for a bad id,
    429 past the open-socket limits."""
    viewer, expires_at = await _viewer(
        websocket, token if token is not None else bearer_token(websocket.scope)
    )
    async with websocket.app.state.database.sessionmaker() as session:
        post = await crud.get_visible_post(session, post_id, viewer)
        author_id, public = post.author_id, post.published
    limits: SocketLimits = websocket.app.state.socket_limits
    lease = await limits.acquire(viewer.id if viewer else None, peer_ip(websocket.scope))
    try:
        await websocket.accept()
    except BaseException:
        await limits.release(lease)
        raise
    hub: LocalHub = websocket.app.state.hub
    socket = LiveSocket(
        websocket=websocket,
        post_id=post_id,
        user_id=viewer.id if viewer else None,
        username=viewer.username if viewer else None,
        is_admin=viewer is not None and viewer.role == "admin",
        author_id=author_id,
        post_public=public,
        viewers=hub.viewers,
        expires_at=expires_at,
    )
    hub.add(socket)
    observability.websocket_opened()
    sender = asyncio.create_task(socket.run_sender())
    expiry = None
    if expires_at is not None:
        expiry = asyncio.get_running_loop().call_later(
            max(0.0, expires_at - time.time()), socket.close_soon, CLOSE_POLICY, "token expired"
        )
    try:
        while not socket.closing:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            await _on_client_frame(hub, limits, socket, message.get("text"))
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        if expiry is not None:
            expiry.cancel()
        hub.remove(socket)
        observability.websocket_closed()
        if not socket.closing:
            socket.close_soon(1000)
        with contextlib.suppress(asyncio.TimeoutError, Exception):
            await asyncio.wait_for(sender, timeout=1.0)
        sender.cancel()
        await limits.release(lease)


async def _on_client_frame(
    hub: LocalHub, limits: SocketLimits, socket: LiveSocket, text: str | None
) -> None:
    if socket.user_id is None:
        socket.offer({"type": "error", "error_code": "AUTH_REQUIRED"})
        return
    if text is None or not text.strip() or len(text) > MAX_MESSAGE_CHARS:
        socket.offer({"type": "error", "error_code": "INVALID_MESSAGE"})
        return
    if not await socket.may_still_speak():
        return  # closed with 1008: the token expired, the user is gone or lost sight of the post
    if not await limits.allow_message(socket.user_id):
        socket.offer({"type": "error", "error_code": "RATE_LIMITED"})
        return
    await hub.publish(
        socket.post_id,
        {"type": "message", "post_id": socket.post_id, "author": socket.username, "text": text},
    )
