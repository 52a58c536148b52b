"""The benchmark's floor: the benchmarked calls as plain FastAPI routes over a raw asyncpg pool.

What a competent, minimal FastAPI app pays for the same answers: FastAPI routing, typed path and
query parameters (validated by FastAPI/pydantic), a pydantic request body and a bearer dependency
that verifies the JWT on every create, answers serialised with orjson into bytes. The SQL is the
ceiling's (imported from bench/ceiling.py), on the same tables, with the same JSON shape, ETag and
`Link` header as the service. There is no middleware, logging, metrics, rate limiting or cache:
`bench/run.py` reports the service's throughput as a ratio of this floor's.

    GET  /posts/{post_id}   published post with `author`; strong ETag `"id-version"`; 404 otherwise
    GET  /posts             published posts newest first, `limit`, `skip`, `cursor`, `q`, `author`
    POST /posts             201 + Location; `Authorization: Bearer <JWT>` verified (pyjwt, HS256)

Run (bench/run.py does this):
    BENCH_DATABASE_URL=postgresql://root@127.0.0.1:5432/blog_bench SECRET_KEY=... \
        uvicorn floor:app --app-dir bench --workers 1 --no-access-log
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import asyncpg
import jwt
import orjson
from ceiling import (
    CREATE_POST,
    GET_POST,
    JSON,
    JWT_ALGORITHM,
    VERSION,
    _dumps,
    _post,
    decode_cursor,
    derived_values,
    first_page,
    pool_lifespan,
)
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, status
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, StringConstraints

MAX_ID = 2**31 - 1


app = FastAPI(lifespan=pool_lifespan("floor"), openapi_url=None, docs_url=None, redoc_url=None)


def _pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


PoolDep = Annotated[asyncpg.Pool, Depends(_pool)]
bearer = HTTPBearer(auto_error=False)


def _unauthorized(detail: str, code: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        detail=f"{detail} ({code})",
        headers={"WWW-Authenticate": "Bearer"},
    )


async def current_user_id(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> int:
    """The bearer token's user id; the token is verified on every request (no memo)."""
    if credentials is None:
        raise _unauthorized("Not authenticated", "NOT_AUTHENTICATED")
    try:
        claims = jwt.decode(
            credentials.credentials,
            request.app.state.secret,
            algorithms=[JWT_ALGORITHM],
            options={"require": ["sub", "exp", "iat"]},
        )
        return int(claims["sub"])
    except (jwt.PyJWTError, ValueError, TypeError):
        raise _unauthorized("Invalid token", "INVALID_TOKEN") from None


UserId = Annotated[int, Depends(current_user_id)]


class PostCreate(BaseModel):
    title: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]
    content: Annotated[str, StringConstraints(min_length=1, max_length=100_000)]
    published: bool = True


def _not_found() -> Response:
    body = orjson.dumps({"detail": "Post not found", "error_code": "POST_NOT_FOUND"})
    return Response(body, status.HTTP_404_NOT_FOUND, media_type=JSON)


@app.get("/posts/{post_id}")
async def get_post(
    post_id: Annotated[int, Path(ge=1, le=MAX_ID)], request: Request, pool: PoolDep
) -> Response:
    """Read one published post."""
    row = await pool.fetchrow(GET_POST, post_id)
    if row is None:
        return _not_found()
    etag = f'"{row[0]}-{row[VERSION]}"'
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": etag})
    return Response(_dumps(_post(row)), headers={"ETag": etag}, media_type=JSON)


@app.get("/posts")
async def list_posts(
    pool: PoolDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    skip: Annotated[int | None, Query(ge=0, le=1_000_000)] = None,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    author: Annotated[str | None, Query(min_length=1, max_length=50)] = None,
    q: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
) -> Response:
    """List published posts, newest first."""
    if cursor is not None and skip is not None:
        raise HTTPException(422, "skip cannot be combined with cursor")
    after: list[Any] | None = None
    if cursor is not None:
        after = decode_cursor(cursor)
        if after is None:
            raise HTTPException(422, "The cursor is not one this service issued")
    body, headers = await first_page(pool, limit, skip, author, q, after)
    return Response(body, headers=headers, media_type=JSON)


@app.post("/posts", status_code=status.HTTP_201_CREATED)
async def create_post(data: PostCreate, user_id: UserId, pool: PoolDep) -> Response:
    """Create a post as the token's user."""
    now = datetime.now(UTC)
    try:
        row = await pool.fetchrow(
            CREATE_POST,
            user_id,
            data.title,
            data.content,
            data.published,
            now,
            *derived_values(data.title, data.content),
        )
    except asyncpg.UniqueViolationError:
        raise HTTPException(409, "A post with this title already exists") from None
    if row is None:  # the token's user does not exist
        raise _unauthorized("Invalid token", "INVALID_TOKEN")
    return Response(
        _dumps(_post(row)),
        status.HTTP_201_CREATED,
        headers={"Location": f"/posts/{row[0]}"},
        media_type=JSON,
    )
