"""uvicorn's httptools HTTP/1.1 protocol with the two limits it lacks.

uvicorn (0.54, httptools) buffers a request head of any size (a 32 MB `Authorization` header
is parsed in full) and has no deadline for it (a client trickling one header byte a second
holds a connection forever: the keep-alive timer only runs between requests). Every start
command selects this class (`--http http_protocol:BoundedHttpToolsProtocol`), which adds:

- a cap on the request head (request line and headers): 431 once it is over
  `MAX_REQUEST_HEAD_BYTES`, checked as the bytes arrive (so at most one more read is
  buffered) and exactly when the head is complete;
- a deadline for the head, `REQUEST_HEAD_TIMEOUT_SECONDS` from the connection or from the first
  byte of each further request on it: 408, then the connection is closed.

Both answers are the JSON error envelope with `Connection: close`. The time to read a body is
bounded in the application (`body_limit.BodyLimit`). In production nginx sits in
front with its own limits (deploy/nginx.conf); these hold when it does not.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from config import get_settings

MAX_REQUEST_HEAD_BYTES = 32 * 1024  # nginx's default allows 4 lines of 8 KiB


class HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a head that is over the cap."""


def error_bytes(status: int, detail: str, error_code: str) -> bytes:
    """A complete HTTP/1.1 response in the error envelope that closes the connection."""
    body = json.dumps({"detail": detail, "error_code": error_code}).encode()
    return b"".join(
        [
            STATUS_LINE[status],
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
    )


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with a size cap and a deadline on each request head."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.head_timeout = get_settings().request_head_timeout_seconds
        self.reading_head = True
        self.head_bytes = 0  # bytes received for the current head (whole reads)
        self.head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's own data_received, with the head's size checked around the parser.
        self._unset_keepalive_if_required()
        if self.reading_head:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, HeadTooLarge):
                self.refuse_head_too_large()
                return
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
            return
        if self.reading_head and self.head_bytes > MAX_REQUEST_HEAD_BYTES:
            self.refuse_head_too_large()  # still no end of the head after the cap

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.reading_head = True
        if self.head_deadline is None:
            self._arm_head_deadline()

    def on_headers_complete(self) -> None:
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > MAX_REQUEST_HEAD_BYTES:
            raise HeadTooLarge()
        self.reading_head = False
        self.head_bytes = 0
        self._cancel_head_deadline()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.reading_head = True  # whatever comes next is the next request's head

    def refuse_head_too_large(self) -> None:
        self.logger.warning("Request head over %d bytes refused.", MAX_REQUEST_HEAD_BYTES)
        self._close_with(
            error_bytes(
                431,
                f"The request line and headers are larger than {MAX_REQUEST_HEAD_BYTES} bytes",
                "HEADERS_TOO_LARGE",
            )
        )

    def head_timed_out(self) -> None:
        self.head_deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A request is being answered; the next head's deadline restarts after it.
            self.cycle.keep_alive = False
            return
        self._close_with(
            error_bytes(
                408,
                f"The request headers did not arrive within {self.head_timeout:g} seconds",
                "REQUEST_TIMEOUT",
            )
        )

    def _close_with(self, response: bytes) -> None:
        self.reading_head = False
        self._cancel_head_deadline()
        if not self.transport.is_closing():
            self.transport.write(response)
            self.transport.close()

    def _arm_head_deadline(self) -> None:
        self._cancel_head_deadline()
        self.head_deadline = self.loop.call_later(self.head_timeout, self.head_timed_out)

    def _cancel_head_deadline(self) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None


def gunicorn_worker_class() -> type:
    """`gunicorn -k http_protocol.GunicornWorker`: uvicorn's worker with the same settings as
    the uvicorn start commands (gunicorn has no flags for them)."""
    from uvicorn_worker import UvicornWorker

    class GunicornWorker(UvicornWorker):  # type: ignore[misc]  # untyped base
        CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
            "loop": "auto",
            "http": BoundedHttpToolsProtocol,
            "proxy_headers": False,
            "server_header": False,
            "ws_max_size": 65536,
        }

    return GunicornWorker


def __getattr__(name: str) -> Any:
    # Lazy: only a gunicorn start imports gunicorn.
    if name == "GunicornWorker":
        return gunicorn_worker_class()
    raise AttributeError(name)
