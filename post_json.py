"""Posts as JSON bytes straight from their database rows, for the hot reads.

The same bytes as `PostRead.model_validate(row).model_dump_json()` (tests/test_post_json.py
checks it field by field on awkward values), without building a model per post: for a page of
ten posts, validating and dumping them through pydantic cost more than the page's query.
Writes and everything else still answer through PostRead.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from database import Row
from schemas import PostRead

FIELDS = tuple(PostRead.model_fields)  # the document's keys, in PostRead's order
TAGS = "tags"  # stored as one space-separated string (models.Post.tags)


def post_document(row: Row) -> dict[str, Any]:
    """The post's JSON object, keys in PostRead's order."""
    document = {name: row[name] for name in FIELDS}
    document[TAGS] = document[TAGS].split()
    return document


def dumps_post(row: Row) -> bytes:
    return orjson.dumps(post_document(row), option=orjson.OPT_UTC_Z)


def dumps_posts(rows: Iterable[Row]) -> bytes:
    return orjson.dumps([post_document(row) for row in rows], option=orjson.OPT_UTC_Z)
