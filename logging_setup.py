"""Logging: JSON lines by default, plain text for people at a terminal."""

from __future__ import annotations

import logging
import re
import socket
import sys
import time
from typing import Any, TextIO

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

    An access record (`access_log.AccessRecord`) carries its fields ready in `fields`: the
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
        return self._time_text(int(record.created), int(record.msecs))

    def time_text(self, created: float) -> str:
        """What formatTime writes for a record made at `created` (time.time())."""
        second = int(created)
        return self._time_text(second, int((created - second) * 1000))

    def _time_text(self, second: int, milliseconds: int) -> str:
        if second != self._second:  # the date and time change once a second, not per line
            self._second_text = time.strftime(self.default_time_format, self.converter(second))
            self._second = second
        return f"{self._second_text},{milliseconds:03d}"


class JsonLinesHandler(logging.StreamHandler[TextIO]):
    """LOG_FORMAT=json: every record through JsonFormatter, and `write_line` for a line whose
    fields are ready (the access line, one per request), straight to the stream."""

    def __init__(self, stream: TextIO, instance: str) -> None:
        super().__init__(stream)
        self.instance = instance
        self.json_formatter = JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s %(instance)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            # uvicorn's copy of its message with terminal colour codes; the tag is text's
            reserved_attrs=[*RESERVED_ATTRS, "color_message", "request_tag"],
        )
        self.setFormatter(self.json_formatter)
        self.own_filters = stamping_filters(instance)
        for own in self.own_filters:
            self.addFilter(own)

    def writes_directly(self) -> bool:
        """`write_line` writes what `logging` would: the handler is as configure_logging made
        it (its own filters, whose stamps write_line adds itself, and formatter) and takes INFO."""
        return (
            self.formatter is self.json_formatter
            and self.filters == self.own_filters
            and self.level <= logging.INFO
        )

    def write_line(self, logger_name: str, message: str, fields: dict[str, Any]) -> None:
        """The line JsonFormatter makes of an INFO record of `logger_name` carrying `fields`,
        written as `emit` would, without the record."""
        try:
            line = orjson.dumps(
                {
                    "time": self.json_formatter.time_text(time.time()),
                    "level": "INFO",
                    "logger": logger_name,
                    "message": message,
                    "request_id": request_id_var.get(),
                    "instance": self.instance,
                    **fields,
                },
                default=self.json_formatter.json_default,
            ).decode()
            self.acquire()
            try:
                self.stream.write(line + self.terminator)
                self.flush()
            finally:
                self.release()
        except RecursionError:
            raise
        except Exception:
            failed = {"name": logger_name, "msg": message, "levelno": logging.INFO}
            self.handleError(logging.makeLogRecord({**failed, "levelname": "INFO"}))


def direct_json_handler(logger: logging.Logger) -> JsonLinesHandler | None:
    """The handler whose `write_line` may stand for logging an INFO record to `logger`: the only
    handler that record would reach, a JsonLinesHandler that `writes_directly`, with no filter
    of `logger`'s on the way. None otherwise: the record goes through `logging`."""
    if logger.filters:
        return None
    found: JsonLinesHandler | None = None
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            if found is not None or type(handler) is not JsonLinesHandler:
                return None
            found = handler
        current = current.parent if current.propagate else None
    return found if found is not None and found.writes_directly() else None


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


def stamping_filters(instance: str) -> list[logging.Filter]:
    """What every handler of the service stamps on a record, or does to it."""
    return [RequestIdFilter(), InstanceFilter(instance), RedactTokens()]


def make_handler(log_format: str | None, instance: str | None = None) -> logging.Handler:
    """The stderr handler of every log record, in the effective format."""
    instance = instance or socket.gethostname()
    if effective_log_format(log_format) == "json":
        return JsonLinesHandler(sys.stderr, instance)
    handler = logging.StreamHandler(sys.stderr)
    for stamp in stamping_filters(instance):
        handler.addFilter(stamp)
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s %(levelname)-7s %(instance)s %(name)s%(request_tag)s %(message)s"
        )
    )
    return handler
