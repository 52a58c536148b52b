"""The access log: one line per HTTP request, logger `blog.access`, written once it is answered
(observability.request_finished, called by the edge).

Its fields: request_id, method, route (the template), path (capped), status, duration_ms, user_id
and client_ip; its message `GET /posts/{post_id} 200 1.2ms` names the template, so the path
appears once. Where the line may go straight to the service's own JSON handler (LOG_FORMAT=json
as configure_logging sets it up, nothing else listening), it is written there in one
`orjson.dumps`, with no log record (logging_setup.JsonLinesHandler.write_line); anywhere else
(the text format, another handler such as pytest's caplog, a filter) it is a log record
(AccessRecord) through `logging`. Both make the same line.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from typing import Any

from starlette.types import Scope

from logging_setup import direct_json_handler

access_logger = logging.getLogger("blog.access")

MAX_LOGGED_PATH = 1024  # characters of a path in the access log; a longer one is cut


class AccessRecord(logging.LogRecord):
    """The access line's record, made without `Logger.info`'s work: no caller lookup (a walk up
    the stack), no `extra` merge, no process and thread names asked for each time. It has every
    attribute a formatter may use; `fields` are the line's own (logging_setup.JsonFormatter
    writes them straight out, the text format ignores them)."""

    def __init__(self, message: str, fields: dict[str, Any]) -> None:
        # LogRecord.__init__ is not called on purpose: it is what this class saves.
        now = time.time()
        self.name = access_logger.name
        self.msg = message
        self.args = ()
        self.levelname = "INFO"
        self.levelno = logging.INFO
        self.pathname = __file__
        self.filename = "access_log.py"
        self.module = "access_log"
        self.exc_info = None
        self.exc_text = None
        self.stack_info = None
        self.lineno = 0
        self.funcName = "access"
        self.created = now
        self.msecs = (now - int(now)) * 1000
        self.relativeCreated = (now - logging._startTime) * 1000  # type: ignore[attr-defined]
        thread = threading.current_thread()
        self.thread = thread.ident
        self.threadName = thread.name
        self.processName = multiprocessing.current_process().name
        self.process = os.getpid()
        self.taskName = None
        self.fields = fields
        self.request_id = fields["request_id"]  # RequestIdFilter sets the same from its context

    def getMessage(self) -> str:
        return self.msg


def log_access(scope: Scope, method: str, route: str, status: int, seconds: float) -> None:
    """The request's access line. The caller's user id comes from `scope["state"]["user_id"]`,
    which `deps.get_optional_user` sets."""
    if not access_logger.isEnabledFor(logging.INFO):
        return
    state = scope.get("state") or {}
    client = scope.get("client")
    duration_ms = round(seconds * 1000, 3)
    path: str = scope["path"]
    if len(path) > MAX_LOGGED_PATH:
        path = f"{path[:MAX_LOGGED_PATH]}...[{len(path) - MAX_LOGGED_PATH} more]"
    fields = {
        "request_id": state.get("request_id"),
        "method": method,
        "route": route,
        "path": path,
        "status": status,
        "duration_ms": duration_ms,
        "user_id": state.get("user_id"),
        "client_ip": client[0] if client else None,
    }
    message = f"{method} {route} {status} {duration_ms:.1f}ms"
    handler = direct_json_handler(access_logger)
    if handler is None:
        access_logger.handle(AccessRecord(message, fields))
    else:
        handler.write_line(access_logger.name, message, fields)
