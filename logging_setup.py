"""Logging: JSON lines by default, plain text for people at a terminal."""

from __future__ import annotations

import logging
import re
import socket
import sys

from pythonjsonlogger.orjson import OrjsonFormatter

from middleware import request_id_var


class RequestIdFilter(logging.Filter):
    """Stamps every record with the id of the request it was logged under."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
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


def configure_logging(level: str, log_format: str, instance: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.addFilter(InstanceFilter(instance or socket.gethostname()))
    handler.addFilter(RedactTokens())
    if log_format == "json":
        handler.setFormatter(
            OrjsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s %(instance)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)-7s %(instance)s %(name)s [%(request_id)s] %(message)s"
            )
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
