"""Graceful shutdown: what the service does between SIGTERM and the server's own shutdown.

uvicorn, on SIGTERM, stops accepting, closes idle keep-alive connections, lets the requests in
flight finish (`--timeout-graceful-shutdown` bounds the wait), then runs the lifespan shutdown.
It would close WebSockets with 1012 (service restart) on the way; the service first closes them
with 1001 (going away) itself, so clients reconnect at once to another instance. The server's
signal handler is wrapped for that: the signal reaches it once the goodbyes are said, and the
process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

import uvicorn

logger = logging.getLogger("blog.shutdown")

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def run_before_server_shutdown(
    prepare: Callable[[], Awaitable[None]], timeout: float
) -> Callable[[], None]:
    """Run `prepare` (for at most `timeout` seconds) when the server is told to stop, then pass
    the signal on to the server's handler; returns the function that puts the server's handlers
    back. Without a server's handler to wrap (in tests, off the main thread) nothing is
    installed."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    servers: dict[int, Callable[[int, FrameType | None], Any]] = {}
    for signum in SIGNALS:
        handler = signal.getsignal(signum)
        if callable(handler) and handler is not signal.default_int_handler:
            servers[signum] = handler
    preparing: asyncio.Task[None] | None = None

    async def bounded() -> None:
        try:
            await asyncio.wait_for(prepare(), timeout)
        except TimeoutError:
            logger.warning("live sockets still open after %.1f s; the server closes them", timeout)

    def forward(sig: int, frame: FrameType | None) -> None:
        handler = servers[sig]
        server = getattr(handler, "__self__", None)
        if sig == signal.SIGTERM and isinstance(server, uvicorn.Server):
            # uvicorn would raise the SIGTERM again once its graceful shutdown is over, and a
            # lone server process (no --workers) would die of it (status 143). A shutdown that
            # was asked for and completed is a success: exit 0, as a supervisor does.
            server.should_exit = True
            return
        handler(sig, frame)

    def begin(sig: int, frame: FrameType | None) -> None:
        nonlocal preparing
        if preparing is not None:  # a second SIGINT forces the server's exit at once
            if sig == signal.SIGINT and not preparing.done():
                forward(sig, frame)
            return
        logger.info("shutting down: closing live sockets before the server stops")
        preparing = loop.create_task(bounded(), name="before-server-shutdown")
        preparing.add_done_callback(lambda _task: forward(sig, frame))

    def on_signal(sig: int, frame: FrameType | None) -> None:
        # A signal handler may interrupt the event loop anywhere: only the thread-safe call.
        loop.call_soon_threadsafe(begin, sig, frame)

    for number in servers:
        signal.signal(number, on_signal)

    def restore() -> None:
        for number, handler in servers.items():
            with contextlib.suppress(ValueError):
                if signal.getsignal(number) is on_signal:
                    signal.signal(number, handler)

    return restore
