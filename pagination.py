"""Opaque keyset cursors: the sort they were made for plus the last row's sort key and id."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from errors import InvalidCursor
from schemas import MAX_ID


@dataclass(frozen=True)
class Cursor:
    sort: str
    value: str  # the last row's sort key, as text (a date in ISO 8601, or a title)
    id: int

    def encode(self) -> str:
        raw = json.dumps([self.sort, self.value, self.id], separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str, expected_sort: str) -> Cursor:
        """Parse a client's cursor; INVALID_CURSOR for garbage or another sort's cursor."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            sort, value, row_id = json.loads(raw)
        except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
            raise InvalidCursor("The cursor is not one this service issued") from None
        if not _is_text(sort) or not isinstance(row_id, int) or isinstance(row_id, bool):
            raise InvalidCursor("The cursor is not one this service issued")
        if not 0 <= row_id <= MAX_ID:  # beyond any id; the database driver would fail on it
            raise InvalidCursor("The cursor is not one this service issued")
        if sort != expected_sort:
            raise InvalidCursor(f"The cursor was made for sort={sort}, not sort={expected_sort}")
        if not _is_text(value):
            raise InvalidCursor("The cursor is not one this service issued")
        return cls(sort, value, row_id)

    def datetime_value(self) -> datetime:
        try:
            parsed = datetime.fromisoformat(self.value)
        except ValueError:
            raise InvalidCursor("The cursor is not one this service issued") from None
        if parsed.tzinfo is None:
            raise InvalidCursor("The cursor is not one this service issued")
        try:
            return parsed.astimezone(UTC)  # the bind does this too; year 1/9999 overflow here
        except OverflowError:
            raise InvalidCursor("The cursor is not one this service issued") from None


def _is_text(value: Any) -> bool:
    """A string both databases can take: JSON's `\\ud800` escapes decode to lone surrogates,
    which UTF-8 (asyncpg, sqlite3) cannot encode, and PostgreSQL text holds no NUL."""
    if not isinstance(value, str) or "\x00" in value:
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def next_link(path: str, params: dict[str, Any], cursor: Cursor) -> str:
    """The `Link` header value for the next page: same filters, the new cursor. A list value
    repeats its parameter (`tag=a&tag=b`)."""
    query: dict[str, str | list[str]] = {
        k: [_param(item) for item in v] if isinstance(v, list) else _param(v)
        for k, v in params.items()
        if v is not None and v != []
    }
    query["cursor"] = cursor.encode()
    return f'<{path}?{urlencode(query, doseq=True)}>; rel="next"'


def _param(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)
