"""The request body's size and time limits: 413 for a body over the limit, decided from
Content-Length or while streaming; 408 when the whole body has not arrived `timeout` seconds
after the app first asked for it (a client trickling a body would otherwise hold a connection and
a task indefinitely)."""

from __future__ import annotations

import asyncio

from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import Message, Receive, Scope

from errors import error_response

MAX_BODY_BYTES = 1024 * 1024
DEFAULT_BODY_TIMEOUT = 30.0  # seconds; Settings.request_body_timeout_seconds


class BodyLimit:
    def __init__(
        self, max_bytes: int = MAX_BODY_BYTES, timeout: float = DEFAULT_BODY_TIMEOUT
    ) -> None:
        self.max_bytes = max_bytes
        self.timeout = timeout

    def declared_too_large(self, scope: Scope) -> bool:
        """The request's Content-Length is over the limit: answer `too_large()` unread."""
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                return True
        return False

    def too_large(self) -> Response:
        return error_response(413, self._detail(), "PAYLOAD_TOO_LARGE")

    def limited(self, receive: Receive) -> Receive:
        """`receive`, raising 413 past the limit and 408 past the deadline."""
        received = 0
        deadline: float | None = None
        body_complete = False

        async def limited_receive() -> Message:
            nonlocal received, deadline, body_complete
            if body_complete:  # e.g. listening for a disconnect: no deadline
                return await receive()
            loop = asyncio.get_running_loop()
            if deadline is None:
                deadline = loop.time() + self.timeout
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                # FastAPI re-raises HTTPException from body reading; the handler makes it 408.
                raise HTTPException(
                    408,
                    f"The request body did not arrive within {self.timeout:g} seconds",
                    headers={"Connection": "close"},
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI re-raises HTTPException from body reading; the handler makes it 413.
                    raise HTTPException(413, self._detail())
                body_complete = not message.get("more_body", False)
            else:
                body_complete = True
            return message

        return limited_receive

    def _detail(self) -> str:
        return f"Request body is larger than {self.max_bytes} bytes"
