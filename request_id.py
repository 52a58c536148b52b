"""The request id: the client's X-Request-ID when it is sane, else a fresh one; log lines read it
from `request_id_var` (logging_setup.RequestIdFilter)."""

from __future__ import annotations

import os
import re
from contextvars import ContextVar

from starlette.types import Scope

REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,128}$")

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)


def incoming_request_id(scope: Scope) -> str:
    """The client's X-Request-ID when it is sane, else a fresh one."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            if REQUEST_ID_PATTERN.match(candidate):
                return candidate
            break
    return os.urandom(16).hex()  # as random as uuid4().hex, without building a UUID
