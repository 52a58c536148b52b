"""Logging: JSON lines by default, plain text for people at a terminal."""

from __future__ import annotations

import logging
import re
import socket
import sys
import time
from typing import Any

import orjson
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.orjson import OrjsonFormatter

from errors import websocket_denied
from request_id import request_id_var


class RequestIdFilter(logging.Filter):
    """Stamps every record with the id of the request it was logged under (`request_tag`:
    ` [id]` for the text format, nothing outside a request, such as start-up lines)."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = request_id_var.get()
        record.request_id = request_id
        record.request_tag = f" [{request_id}]" if request_id else ""
        return True


class InstanceFilter(logging.Filter):
    """Stamps every record with the instance it comes from (INSTANCE_ID), so the lines of
    several instances behind a load balancer can be told apart once collected together."""

    def __init__(self, instance: str) -> None:
        super().__init__()
        self.instance = instance

    def filter(self, record: logging.LogRecord) -> bool:
        record.instance = self.instance
        return True


TOKEN_IN_QUERY = re.compile(r"([?&]token=)[^&\s\"']*")


class RedactTokens(logging.Filter):
    """uvicorn logs every WebSocket handshake with its path and query, where a client's JWT
    (`?token=...`) would land in the logs in clear; it is replaced by `[redacted]`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("uvicorn"):
            message = record.getMessage()
            if "token=" in message:
                record.msg, record.args = TOKEN_IN_QUERY.sub(r"\1[redacted]", message), ()
        return True


UNFINISHED_HANDSHAKE = "ASGI callable returned without completing handshake."


class DeniedHandshakeIsNoError(logging.Filter):
    """uvicorn's websockets-sansio protocol logs an ERROR after every WebSocket handshake the
    application refused with an HTTP answer (401, 404, 422, 429): it checks only whether the
    socket was accepted. The refusal is already logged at INFO (`"WebSocket /ws/..." 404`);
    that ERROR is dropped, while the same words after a handshake left unanswered still log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == UNFINISHED_HANDSHAKE and websocket_denied.get())


class JsonFormatter(OrjsonFormatter):
    """python-json-logger's line, with a fast path for the access line (one per request).

    An access record (`observability.AccessRecord`) carries its fields ready in `fields`: the
    line is those after the usual time, level, logger, message, request_id and instance, in one
    `orjson.dumps`, the same keys in the same order as the general path writes them, without its
    scan of every attribute of the record."""

    _second = -1
    _second_text = ""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] | None = getattr(record, "fields", None)
        if fields is None or record.exc_info or record.stack_info:
            return super().format(record)
        return orjson.dumps(
            {
                "time": self.formatTime(record, self.datefmt),
                "level": record.levelname,
                "logger": record.name,
                "message": record.getMessage(),
                "request_id": getattr(record, "request_id", None),
                "instance": getattr(record, "instance", None),
                **fields,
            },
            default=self.json_default,
        ).decode()

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)  # the date and time change once a second, not per line
        if second != self._second:
            self._second_text = time.strftime(self.default_time_format, self.converter(second))
            self._second = second
        return f"{self._second_text},{int(record.msecs):03d}"


def effective_log_format(log_format: str | None) -> str:
    """LOG_FORMAT, or when it is unset: text for a person at a terminal, JSON for machines."""
    if log_format is not None:
        return log_format
    return "text" if sys.stderr.isatty() else "json"


def configure_logging(level: str, log_format: str | None, instance: str | None = None) -> None:
    root = logging.getLogger()
    root.handlers[:] = [make_handler(log_format, instance)]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    uvicorn_error = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, DeniedHandshakeIsNoError) for f in uvicorn_error.filters):
        uvicorn_error.addFilter(DeniedHandshakeIsNoError())
    logging.getLogger("uvicorn.access").disabled = True


def make_handler(log_format: str | None, instance: str | None = None) -> logging.Handler:
    """The stderr handler of every log record, in the effective format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.addFilter(InstanceFilter(instance or socket.gethostname()))
    handler.addFilter(RedactTokens())
    if effective_log_format(log_format) == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s %(instance)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                # uvicorn's copy of its message with terminal colour codes; the tag is text's
                reserved_attrs=[*RESERVED_ATTRS, "color_message", "request_tag"],
            )
        )
    else:
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)-7s %(instance)s %(name)s%(request_tag)s %(message)s"
            )
        )
    return handler
