"""The benchmark's ceiling: the service's benchmarked calls with no framework layers.

Plain Starlette routing + one asyncpg pool + orjson, hand-written SQL, nothing else: no
middleware (request ids, metrics, rate limits, security headers), no logging, no ORM, no
pydantic, no cache. It answers what `bench/run.py` drives, with the same JSON and headers that
matter to a client:

    GET  /posts/{id}    published post with `author` (username) and a strong ETag; 404 otherwise
    GET  /posts         published posts, newest first (created_at, id), `limit`, `skip`, `cursor`,
                        `q` (full-text on the stored posts.search_document, as crud.py),
                        `author` (case-insensitive username substring, each matching
                        author's newest posts through LATERAL, as crud.py); a
                        `Link: <...>; rel="next"` header built exactly as pagination.py does
    POST /posts         201 + Location; the content rendered by the service's rendering.py
                        (markdown-it-py + nh3), the slug made from the title; the bearer
                        JWT *is* verified (pyjwt, HS256, SECRET_KEY, sub/exp/iat required)
                        and the author looked up in the same statement as the insert, so
                        the ceiling does the work the contract needs, no more

Being a ceiling, the asyncpg pool skips its per-release reset query (nothing here changes
session state) and every query runs as a prepared statement from asyncpg's statement cache.

Run (bench/run.py does this):
    BENCH_DATABASE_URL=postgresql://root@127.0.0.1:5432/blog_bench SECRET_KEY=... \
        uvicorn ceiling:app --app-dir bench --workers 1 --no-access-log
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import asyncpg
import jwt
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rendering import render, slug_from_title

# The stored full-text document (models.Post.search_document, GIN index ix_posts_search).
SEARCH_DOCUMENT = "p.search_document"
SORT = "-created_at"  # the default (and only) order the ceiling serves
JWT_ALGORITHM = "HS256"
JSON = "application/json"

COLUMNS = (
    "p.id, p.title, p.slug, p.content, p.content_html, p.excerpt, p.reading_time_minutes, p.tags, "
    "u.username, p.author_id, p.published, p.created_at, p.updated_at"
)
# Positions in a row of COLUMNS (+ version in GET_POST).
CREATED_AT, VERSION = 11, 13
GET_POST = (
    f"SELECT {COLUMNS}, p.version FROM posts p JOIN users u ON u.id = p.author_id "
    "WHERE p.id = $1 AND p.published IS true"
)
CREATE_POST = f"""
WITH author AS (SELECT id, username FROM users WHERE id = $1),
inserted AS (
    INSERT INTO posts (title, content, published, author_id, version, created_at, updated_at,
                       slug, content_html, excerpt, reading_time_minutes, tags)
    SELECT $2, $3, $4, author.id, 1, $5, $5, $6, $7, $8, $9, '' FROM author
    RETURNING *
)
SELECT {COLUMNS.replace("u.username", "author.username")}
FROM inserted p CROSS JOIN author
"""


def _dsn() -> str:
    url = os.environ.get("BENCH_DATABASE_URL") or os.environ.get("DATABASE_URL", "")
    for prefix in ("postgresql+asyncpg://", "postgres://"):
        if url.startswith(prefix):
            url = "postgresql://" + url[len(prefix) :]
    if not url.startswith("postgresql://"):
        raise SystemExit("ceiling: set BENCH_DATABASE_URL to a postgresql:// URL")
    return url


async def _no_reset(_connection: asyncpg.Connection) -> None:
    """Released connections are reused as they are: no query on release."""


def pool_lifespan(name: str) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """The lifespan of the ceiling and the floor (`name` says which in its error): the token key
    in `app.state.secret`, the asyncpg pool in `app.state.pool`."""

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        secret = os.environ.get("SECRET_KEY", "")
        if not secret:
            raise SystemExit(f"{name}: set SECRET_KEY (the service's) to verify bearer tokens")
        app.state.secret = secret
        # The service's pool: DB_POOL_SIZE=10 + DB_MAX_OVERFLOW=10.
        app.state.pool = await asyncpg.create_pool(
            _dsn(), min_size=10, max_size=20, reset=_no_reset
        )
        try:
            yield
        finally:
            await app.state.pool.close()

    return lifespan


# --- helpers ---------------------------------------------------------------------------------


def _error(status: int, detail: str, code: str, headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps({"detail": detail, "error_code": code})
    return Response(body, status, headers=headers, media_type=JSON)


def _post(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row[0],
        "title": row[1],
        "slug": row[2],
        "content": row[3],
        "content_html": row[4],
        "excerpt": row[5],
        "reading_time_minutes": row[6],
        "tags": row[7].split(),
        "author": row[8],
        "author_id": row[9],
        "published": row[10],
        "created_at": row[11],
        "updated_at": row[12],
    }


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_UTC_Z)


def encode_cursor(created_at: datetime, post_id: int) -> str:
    """pagination.Cursor.encode for the default sort."""
    raw = json.dumps([SORT, created_at.isoformat(), post_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(token: str) -> tuple[datetime, int] | None:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        sort, value, post_id = json.loads(raw)
        moment = datetime.fromisoformat(value)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        return None
    if sort != SORT or type(post_id) is not int or moment.tzinfo is None:
        return None
    return moment, post_id


def _like_pattern(fragment: str) -> str:
    escaped = fragment.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _int_param(request: Request, name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    value = int(raw)  # ValueError -> 422 by the caller
    if not low <= value <= high:
        raise ValueError(name)
    return value


def derived_values(title: str, content: str) -> tuple[str, str, str, int]:
    """CREATE_POST's $6-$9, as the service stores them: the slug (bench titles slugify uniquely,
    so no `-N` retries here) and the rendering."""
    rendered = render(content)
    return slug_from_title(title), rendered.html, rendered.excerpt, rendered.reading_time_minutes


# --- endpoints -------------------------------------------------------------------------------


async def get_post(request: Request) -> Response:
    post_id: int = request.path_params["post_id"]
    if not 0 < post_id < 2**31:
        return _error(404, "Post not found", "POST_NOT_FOUND")
    row = await request.app.state.pool.fetchrow(GET_POST, post_id)
    if row is None:
        return _error(404, "Post not found", "POST_NOT_FOUND")
    etag = f'"{row[0]}-{row[VERSION]}"'
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={"ETag": etag})
    return Response(_dumps(_post(row)), headers={"ETag": etag}, media_type=JSON)


async def posts(request: Request) -> Response:
    if request.method == "POST":
        return await create_post(request)
    return await list_posts(request)


async def first_page(
    pool: asyncpg.Pool,
    limit: int,
    skip: int | None,
    author: str | None,
    q: str | None,
    after: list[Any] | None,
) -> tuple[bytes, dict[str, str]]:
    """A page of published posts, newest first, and its `Link` header: the SQL and the JSON
    the floor (bench/floor.py) shares, so the two can only differ in their framework."""
    where = ["p.published IS true"]
    args: list[Any] = []
    if author:
        args.append(_like_pattern(author))
    if q:
        args.append(q)
        where.append(f"{SEARCH_DOCUMENT} @@ plainto_tsquery('english', ${len(args)})")
    if after is not None:
        args += after
        where.append(f"(p.created_at, p.id) < (${len(args) - 1}, ${len(args)})")
    args += (limit + 1, skip or 0)
    newest = "ORDER BY p.created_at DESC, p.id DESC"
    page = f"LIMIT ${len(args) - 1} OFFSET ${len(args)}"
    if author:  # crud.py's form: each matching author's first posts (LATERAL), merged
        sql = (
            f"SELECT {COLUMNS} FROM (SELECT id, username FROM users WHERE lower(username) "
            "LIKE $1 ESCAPE '\\') u CROSS JOIN LATERAL (SELECT * FROM posts p "
            f"WHERE p.author_id = u.id AND {' AND '.join(where)} {newest} "
            f"LIMIT ${len(args) - 1}::int + ${len(args)}::int) p {newest} {page}"
        )
    else:
        sql = (
            f"SELECT {COLUMNS} FROM posts p JOIN users u ON u.id = p.author_id "
            f"WHERE {' AND '.join(where)} {newest} {page}"
        )
    rows = await pool.fetch(sql, *args)
    headers = {}
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        # pagination.next_link: limit, the filters in PostFilters order, sort, cursor.
        query: dict[str, Any] = {"limit": limit}
        if author:
            query["author"] = author
        if q:
            query["q"] = q
        query["sort"] = SORT
        query["cursor"] = encode_cursor(last[CREATED_AT], last[0])
        headers["Link"] = f'</posts?{urlencode(query)}>; rel="next"'
    return _dumps([_post(row) for row in rows]), headers


async def list_posts(request: Request) -> Response:
    params = request.query_params
    try:
        limit = _int_param(request, "limit", 10, 1, 100)
        skip = _int_param(request, "skip", None, 0, 2**62)
    except ValueError:
        return _error(422, "limit must be 1-100 and skip 0 or more", "VALIDATION_ERROR")
    assert limit is not None
    cursor = params.get("cursor")
    author = params.get("author")
    q = params.get("q")
    if cursor is not None and skip is not None:
        return _error(422, "skip cannot be combined with cursor", "VALIDATION_ERROR")

    after: list[Any] | None = None
    if cursor is not None:
        after = decode_cursor(cursor)
        if after is None:
            return _error(422, "The cursor is not one this service issued", "INVALID_CURSOR")
    body, headers = await first_page(request.app.state.pool, limit, skip, author, q, after)
    return Response(body, headers=headers, media_type=JSON)


async def create_post(request: Request) -> Response:
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return _error(401, "Not authenticated", "NOT_AUTHENTICATED", {"WWW-Authenticate": "Bearer"})
    try:
        claims = jwt.decode(
            token,
            request.app.state.secret,
            algorithms=[JWT_ALGORITHM],
            options={"require": ["sub", "exp", "iat"]},
        )
        user_id = int(claims["sub"])
    except (jwt.PyJWTError, ValueError, TypeError):
        return _error(401, "Invalid token", "INVALID_TOKEN", {"WWW-Authenticate": "Bearer"})
    try:
        data = orjson.loads(await request.body())
        title = data["title"].strip()
        content = data["content"]
        published = data.get("published", True)
        valid = (
            0 < len(title) <= 255
            and isinstance(content, str)
            and 0 < len(content) <= 100_000
            and content.strip()
            and isinstance(published, bool)
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        valid = False
    if not valid:
        return _error(422, "title, content and published are required", "VALIDATION_ERROR")
    now = datetime.now(UTC)
    try:
        row = await request.app.state.pool.fetchrow(
            CREATE_POST, user_id, title, content, published, now, *derived_values(title, content)
        )
    except asyncpg.UniqueViolationError:
        return _error(409, "A post with this title already exists", "POST_TITLE_EXISTS")
    if row is None:  # the token's user does not exist
        return _error(401, "Invalid token", "INVALID_TOKEN", {"WWW-Authenticate": "Bearer"})
    return Response(
        _dumps(_post(row)), 201, headers={"Location": f"/posts/{row[0]}"}, media_type=JSON
    )


app = Starlette(
    routes=[
        Route("/posts", posts, methods=["GET", "POST"]),
        Route("/posts/{post_id:int}", get_post, methods=["GET"]),
    ],
    lifespan=pool_lifespan("ceiling"),
)
