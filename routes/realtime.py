"""WebSocket live updates for one post."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

import crud
import observability
from errors import AppError
from models import User
from ratelimit import bearer_token
from realtime import CLOSE_POLICY, MAX_MESSAGE_CHARS, LiveSocket, LocalHub
from schemas import ObjectId
from security import decode_access_token

logger = logging.getLogger("blog.realtime")

router = APIRouter()


async def _viewer(websocket: WebSocket, token: str | None) -> User | None:
    if token is None:
        return None
    user_id = decode_access_token(token, websocket.app.state.settings.jwt_secret)
    user = await crud.get_user(websocket.app.state.database, user_id)
    if user is None:
        raise AppError("Invalid token")
    return user


@router.websocket("/ws/posts/{post_id}")
async def post_updates(websocket: WebSocket, post_id: ObjectId, token: str | None = None) -> None:
    """Live events for a post; signed-in sockets may also send short messages.

    The token comes from `?token=` (browsers cannot set headers on a WebSocket) or, for other
    clients, from `Authorization: Bearer`; a bad one is refused either way."""
    try:
        viewer = await _viewer(
            websocket, token if token is not None else bearer_token(websocket.scope)
        )
        async with websocket.app.state.database.sessionmaker() as session:
            await crud.get_visible_post(session, post_id, viewer)
    except AppError:
        await websocket.close(code=CLOSE_POLICY)  # before accept: HTTP 403 at the handshake
        return
    await websocket.accept()
    hub: LocalHub = websocket.app.state.hub
    socket = LiveSocket(
        websocket=websocket,
        post_id=post_id,
        user_id=viewer.id if viewer else None,
        username=viewer.username if viewer else None,
        is_admin=viewer is not None and viewer.role == "admin",
    )
    hub.add(socket)
    observability.websocket_opened()
    sender = asyncio.create_task(socket.run_sender())
    try:
        while not socket.closing:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            await _on_client_frame(hub, socket, message.get("text"))
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        hub.remove(socket)
        observability.websocket_closed()
        if not socket.closing:
            socket.close_soon(1000)
        with contextlib.suppress(asyncio.TimeoutError, Exception):
            await asyncio.wait_for(sender, timeout=1.0)
        sender.cancel()


async def _on_client_frame(hub: LocalHub, socket: LiveSocket, text: str | None) -> None:
    if socket.user_id is None:
        socket.offer({"type": "error", "error_code": "AUTH_REQUIRED"})
        return
    if text is None or not text.strip() or len(text) > MAX_MESSAGE_CHARS:
        socket.offer({"type": "error", "error_code": "INVALID_MESSAGE"})
        return
    if not socket.allow_message():
        socket.offer({"type": "error", "error_code": "RATE_LIMITED"})
        return
    await hub.publish(
        socket.post_id,
        {"type": "message", "post_id": socket.post_id, "author": socket.username, "text": text},
    )
