"""Pydantic schemas at the HTTP boundary."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from fastapi import Path, Query
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    EmailStr,
    Field,
    GetJsonSchemaHandler,
    StringConstraints,
    WithJsonSchema,
    field_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from rendering import SLUG_FORM, SLUG_MAX_LENGTH, SLUG_PATTERN

MAX_ID = 2**31 - 1  # ids are 32-bit integers in the database
MAX_SKIP = 1_000_000

ObjectId = Annotated[int, Path(ge=1, le=MAX_ID)]


def _not_a_number(value: Any) -> Any:
    """Query dates are ISO 8601; pydantic alone would take "1700000000" (or "20260101") as a
    Unix time."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return value
        raise ValueError("Input should be an ISO 8601 date-time, e.g. 2026-01-01T00:00:00Z")
    return value


DateBound = Annotated[datetime | None, BeforeValidator(_not_a_number)]
Skip = Annotated[int | None, Query(ge=0, le=MAX_SKIP, description="Offset; not with `cursor`.")]
Limit = Annotated[int, Query(ge=1, le=100)]


def header_schema(**constraints: Any) -> WithJsonSchema:
    """An optional header's schema: a string that may be left out, never null (a generated
    client would pass None on to its HTTP library, which cannot send it)."""
    return WithJsonSchema({"type": "string", **constraints})


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _no_nul(value: str) -> str:
    """PostgreSQL text cannot hold NUL (a 500 there, stored on SQLite): refused on both."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


Username = Annotated[
    str, StringConstraints(min_length=3, max_length=50, pattern=r"^[A-Za-z0-9_.-]+$")
]
Password = Annotated[str, StringConstraints(min_length=8, max_length=128)]
# Documented in the schema: not blank (Title: after trimming) and no NUL character.
TEXT_PATTERN = r"^[^\u0000]*[^\s\u0000][^\u0000]*$"


def _text_schema(max_length: int) -> WithJsonSchema:
    return WithJsonSchema(
        {"type": "string", "minLength": 1, "maxLength": max_length, "pattern": TEXT_PATTERN}
    )


Title = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=255),
    AfterValidator(_no_nul),
    _text_schema(255),
]
Content = Annotated[
    str,
    StringConstraints(min_length=1, max_length=100_000),
    AfterValidator(_not_blank),
    AfterValidator(_no_nul),
    _text_schema(100_000),
]
CommentText = Annotated[
    str,
    StringConstraints(min_length=1, max_length=500),
    AfterValidator(_not_blank),
    AfterValidator(_no_nul),
    _text_schema(500),
]


def _fields_not_nullable(schema: dict[str, Any]) -> None:
    """Document fields that may be left out but are never null (absent rather than null)."""
    for field in schema.get("properties", {}).values():
        options = [o for o in field.pop("anyOf", []) if o.get("type") != "null"]
        if len(options) == 1:
            field.update(options[0])
        elif options:
            field["anyOf"] = options


class ValidationErrorItem(BaseModel):
    """One finding of a 422 VALIDATION_ERROR: where, what, and its kind."""

    loc: list[str | int] = Field(examples=[["body", "title"]])
    msg: str = Field(examples=["String should have at least 1 character"])
    type: str = Field(examples=["string_too_short"])


MAX_TAGS = 10
TAG_PATTERN = r"^[a-z0-9-]{1,30}$"
_TAG_FORM = re.compile(TAG_PATTERN)
# What a client may send for one tag: trimmed and lower-cased before the rule above applies.
TAG_INPUT_PATTERN = r"^\s*[A-Za-z0-9-]{1,30}\s*$"


def normalise_tag(name: str) -> str:
    """`Python` and ` python` are one tag; ValueError when the name cannot be one."""
    tag = name.strip().lower()
    if not _TAG_FORM.fullmatch(tag):
        raise ValueError(f"a tag is 1-30 characters of a-z, 0-9 and -, not {name!r}")
    return tag


def _normalise_tags(names: list[str]) -> list[str]:
    tags = sorted({normalise_tag(name) for name in names})
    if len(tags) > MAX_TAGS:
        raise ValueError(f"at most {MAX_TAGS} distinct tags")
    return tags


Tags = Annotated[
    list[Annotated[str, StringConstraints(max_length=100)]],
    Field(max_length=50),
    AfterValidator(_normalise_tags),
    WithJsonSchema(
        {
            "type": "array",
            "maxItems": MAX_TAGS,
            "items": {"type": "string", "pattern": TAG_INPUT_PATTERN},
            "description": "Tag names, trimmed and lower-cased (`Python` is `python`); "
            f"at most {MAX_TAGS} distinct ones. On update, replaces the whole list.",
        }
    ),
]


def _normalise_slug(value: str) -> str:
    slug = value.lower()
    if not SLUG_FORM.fullmatch(slug):
        raise ValueError("a slug is groups of a-z and 0-9 joined by single hyphens")
    return slug


SLUG_INPUT_PATTERN = SLUG_PATTERN.replace("a-z0-9", "A-Za-z0-9")
Slug = Annotated[
    str,
    StringConstraints(min_length=1, max_length=SLUG_MAX_LENGTH),
    AfterValidator(_normalise_slug),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": SLUG_MAX_LENGTH,
            "pattern": SLUG_INPUT_PATTERN,
            "description": "Lower-cased; unique case-insensitively (else 409 SLUG_TAKEN).",
            "examples": ["hello-world"],
        }
    ),
]


def _split_tags(value: Any) -> Any:
    """Posts store their tags as one space-separated string (models.Post.tags)."""
    return value.split() if isinstance(value, str) else value


class ErrorResponse(BaseModel):
    """The envelope of every error answer."""

    model_config = ConfigDict(json_schema_extra=_fields_not_nullable)

    detail: str | list[ValidationErrorItem] = Field(
        description="A message, or for VALIDATION_ERROR the list of findings."
    )
    error_code: str = Field(examples=["POST_NOT_FOUND"])
    request_id: str | None = Field(
        default=None, description="Only on 500 answers: the X-Request-ID to quote."
    )


# --- users -----------------------------------------------------------------------------------


class UserCreate(BaseModel):
    username: Username = Field(examples=["alice"])
    email: EmailStr = Field(examples=["alice@example.com"])
    password: Password = Field(examples=["correct horse battery"])

    @field_validator("email")
    @classmethod
    def _lower_email(cls, value: str) -> str:
        return value.lower()


class UserRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    username: str
    email: str
    role: Literal["user", "admin"]
    created_at: AwareDatetime


class LoginForm(BaseModel):
    """The OAuth2 password grant's form (RFC 6749, 4.3.2), as Swagger UI's Authorize sends it."""

    model_config = ConfigDict(json_schema_extra=_fields_not_nullable)

    grant_type: str | None = Field(default=None, pattern="^password$")
    username: str = Field(examples=["alice"])
    password: str = Field(json_schema_extra={"format": "password"})
    scope: str = ""
    client_id: str | None = None
    client_secret: str | None = Field(default=None, json_schema_extra={"format": "password"})


class Token(BaseModel):
    # Fields with a default are still always sent: required in the answer's schema.
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds until the token expires.")


# --- posts -----------------------------------------------------------------------------------


class PostCreate(BaseModel):
    title: Title = Field(examples=["Hello, world"])
    content: Content = Field(examples=["My first post."])
    published: bool = True
    tags: Tags = Field(default_factory=list, examples=[["python", "async"]])
    slug: Slug | None = Field(
        default=None, description="Made from the title when left out (`-2`, `-3`, ... if taken)."
    )


class PostUpdate(BaseModel):
    """Every field optional: only the fields sent change."""

    model_config = ConfigDict(json_schema_extra=_fields_not_nullable)

    title: Title | None = None
    content: Content | None = None
    published: bool | None = None
    tags: Tags | None = None
    slug: Slug | None = None

    @field_validator("title", "content", "published", "tags", "slug", mode="before")
    @classmethod
    def _null_is_not_a_value(cls, value: object) -> object:
        if value is None:
            raise ValueError("must not be null; leave the field out to keep it")
        return value


class PostRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    title: str
    slug: str = Field(description="Unique; kept when the title changes.")
    content: str = Field(description="Markdown (CommonMark, tables, strikethrough).")
    content_html: str = Field(
        description="`content` rendered and sanitized: formatting elements only; links get "
        '`rel="nofollow noopener"`; no script, style, iframe, event attribute or other raw HTML.'
    )
    excerpt: str = Field(
        description="The rendering's plain text, at most 200 characters, cut at a word boundary "
        "and ending in `…` when cut."
    )
    reading_time_minutes: int = Field(ge=1, description="Words / 230, rounded up.")
    tags: Annotated[list[str], BeforeValidator(_split_tags)] = Field(
        description="Tag names, sorted."
    )
    author: str = Field(description="The author's username.")
    author_id: int
    published: bool
    created_at: AwareDatetime
    updated_at: AwareDatetime


class TagCount(BaseModel):
    name: str
    post_count: int = Field(description="Published posts carrying the tag.")


class UserProfile(BaseModel):
    """What anyone may see of a user."""

    id: int
    username: str
    created_at: AwareDatetime
    post_count: int = Field(description="Published posts.")


class PostSort(StrEnum):
    CREATED_DESC = "-created_at"
    CREATED_ASC = "created_at"
    UPDATED_DESC = "-updated_at"
    UPDATED_ASC = "updated_at"
    TITLE_ASC = "title"
    TITLE_DESC = "-title"

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        # Generated clients name the members after the values, which is unreadable for "-title".
        schema = handler(core_schema)
        schema["x-enum-varnames"] = [member.name for member in cls]
        return schema


class PostFilters(BaseModel):
    """The list filters, validated; the next-page link repeats them."""

    author: str | None = None
    author_id: int | None = None
    tag: list[str] = []
    min_date: datetime | None = None
    max_date: datetime | None = None
    q: str | None = None
    published: bool = True
    sort: PostSort = PostSort.CREATED_DESC


class Status(BaseModel):
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    """Readiness of the service's dependencies; `detail`/`error_code` only when unavailable."""

    model_config = ConfigDict(json_schema_extra=_fields_not_nullable)

    status: Literal["ok", "unavailable"]
    database: Literal["ok", "error", "not migrated"] = Field(
        description="`not migrated`: the schema is not the one this version needs."
    )
    cache: Literal["redis", "in-process", "disabled", "degraded"] = Field(
        description="Where the post cache, rate limits and live fan-out run: `redis`, "
        "`in-process` (no REDIS_URL), `disabled` (no REDIS_URL and CACHE_TTL_SECONDS=0) or "
        "`degraded` (REDIS_URL set but unreachable: the in-process fallbacks serve, still ready)."
    )
    detail: str | None = None
    error_code: str | None = None


# --- comments --------------------------------------------------------------------------------


class CommentCreate(BaseModel):
    text: CommentText = Field(examples=["Nice post!"])


class CommentRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    post_id: int
    text: str
    author: str = Field(description="The author's username.")
    author_id: int
    created_at: AwareDatetime
