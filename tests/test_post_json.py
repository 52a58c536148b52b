"""post_json writes the bytes PostRead's serializer writes, for every kind of value."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import TypeAdapter

from post_json import FIELDS, dumps_post, dumps_posts
from schemas import PostRead

AWKWARD_TEXT = [
    "",
    "plain",
    'quotes " and \\ backslashes',
    "control \x00\x01\x1f\x7f characters",
    "line\nbreaks\r\tand tabs",
    "unicode: Crème brûlée, 日本語, emoji 🎉, separators \u2028\u2029",
    "</script><!-- html -->",
    "x" * 5000,
]
TIMES = [
    datetime(2026, 1, 1, tzinfo=UTC),  # no microseconds
    datetime(2026, 11, 25, 16, 41, 46, 546456, tzinfo=UTC),
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2026, 6, 1, 12, 0, 0, 1000, tzinfo=UTC) + timedelta(microseconds=1),
]


def row(n: int, **fields: Any) -> dict[str, Any]:
    text = AWKWARD_TEXT[n % len(AWKWARD_TEXT)]
    return {
        "id": n + 1,
        "title": text or "t",
        "slug": f"post-{n}",
        "content": text,
        "content_html": f"<p>{text}</p>",
        "excerpt": text[:200],
        "reading_time_minutes": n + 1,
        "tags": " ".join(["python", "async-io", "a"][: n % 4]),
        "author": f"user_{n}",
        "author_id": 2**31 - 1 - n,
        "published": n % 2 == 0,
        "created_at": TIMES[n % len(TIMES)],
        "updated_at": TIMES[(n + 1) % len(TIMES)],
        "version": 7,  # a column the document leaves out
        **fields,
    }


ROWS = [row(n) for n in range(24)]


@pytest.mark.parametrize("post", ROWS, ids=lambda post: str(post["id"]))
def test_one_post_is_pydantics_bytes(post: dict[str, Any]) -> None:
    assert dumps_post(post) == PostRead.model_validate(post).model_dump_json().encode()


def test_a_page_is_pydantics_bytes() -> None:
    pages = TypeAdapter(list[PostRead])
    assert dumps_posts(ROWS) == pages.dump_json(pages.validate_python(ROWS))
    assert dumps_posts([]) == b"[]"


def test_the_fields_are_postreads_in_order() -> None:
    assert tuple(PostRead.model_fields) == FIELDS
    assert list(PostRead.model_validate(ROWS[3]).model_dump()) == list(FIELDS)
