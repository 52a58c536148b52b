"""`Idempotency-Key` on creates: the first final answer is stored and replayed for 24 h.

The answer is recorded in the same database transaction as the write it describes, so a crash
between the two is impossible: either both exist (a retry replays) or neither (a retry runs
again). A concurrent duplicate is detected with a transaction-scoped PostgreSQL advisory lock,
or an in-process lock on SQLite (one process), and answered 409 IDEMPOTENCY_KEY_IN_USE.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

from fastapi import Header, Request, Response
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.routing import Route

from errors import AppError
from models import IdempotencyRecord, User, utcnow
from schemas import header_schema

RETENTION = timedelta(hours=24)


class IdempotencyKeyReused(AppError):
    status_code = 422
    error_code = "IDEMPOTENCY_KEY_REUSED"
    detail = "This Idempotency-Key was used with a different request body"


class IdempotencyKeyInUse(AppError):
    status_code = 409
    error_code = "IDEMPOTENCY_KEY_IN_USE"
    detail = "A request with this Idempotency-Key is still being processed"


IdempotencyKey = Annotated[
    str | None,
    Header(
        min_length=1,
        max_length=255,
        description="Retry-safe creates: the same key and body replay the first answer for 24 h.",
    ),
    header_schema(minLength=1, maxLength=255),
]


@dataclass
class Answer:
    """A final answer to a create: what is stored and replayed, plus the created object."""

    status_code: int
    body: bytes
    location: str | None = None
    created: Any = None
    replayed: bool = False


@dataclass(frozen=True)
class Scope:
    user_id: int
    endpoint: str
    key: str
    fingerprint: str

    def lock_id(self) -> int:
        digest = hashlib.sha256(f"{self.user_id}\0{self.endpoint}\0{self.key}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)


_local_locks: set[tuple[int, str, str]] = set()


def answer_response(answer: Answer) -> Response:
    """The HTTP response for a fresh or replayed answer."""
    headers = {"Location": answer.location} if answer.location else {}
    if answer.replayed:
        headers["Idempotent-Replayed"] = "true"
    return Response(answer.body, answer.status_code, headers, media_type="application/json")


async def scope_for(
    request: Request, user: User, key: str | None, **path_params: int
) -> Scope | None:
    """The caller, endpoint and body fingerprint a key applies to; None without a key.

    The endpoint is the route's template filled with its parsed parameters, never the raw path:
    `/posts/0003/comments` is `/posts/3/comments`, and a padded id cannot overflow the column."""
    if key is None:
        return None
    route = request.scope["route"]
    assert isinstance(route, Route)
    endpoint = f"{request.method} {route.path_format.format(**path_params)}"
    try:
        canonical = json.dumps(json.loads(await request.body()), sort_keys=True)
    except ValueError:
        canonical = (await request.body()).decode("utf-8", "replace")
    fingerprint = hashlib.sha256(canonical.encode()).hexdigest()
    return Scope(user.id, endpoint, key, fingerprint)


async def run(
    session: AsyncSession, scope: Scope | None, write: Callable[[], Awaitable[Answer]]
) -> Answer:
    """Run an uncommitted `write` and commit it together with its recorded answer."""
    if scope is None:
        answer = await write()
        await session.commit()
        return answer
    local_key = (scope.user_id, scope.endpoint, scope.key)
    locked = await _try_lock(session, scope, local_key)
    try:
        previous = await _find(session, scope)
        if previous is not None:
            same_body = previous.fingerprint == scope.fingerprint
            replay = Answer(
                previous.status_code, previous.body.encode(), previous.location, replayed=True
            )
            await session.rollback()  # ends the transaction and its lock
            if not same_body:
                raise IdempotencyKeyReused()
            return replay
        if not locked:
            raise IdempotencyKeyInUse()
        try:
            answer = await write()
        except AppError as exc:
            await session.rollback()
            if exc.status_code != 422 and exc.status_code < 500:
                await _record_failure(session, scope, exc)
            raise
        session.add(_record(scope, answer))
        await session.commit()
        return answer
    finally:
        if locked and session.get_bind().dialect.name != "postgresql":
            _local_locks.discard(local_key)


async def _try_lock(session: AsyncSession, scope: Scope, local_key: tuple[int, str, str]) -> bool:
    if session.get_bind().dialect.name == "postgresql":
        acquired = await session.scalar(select(func.pg_try_advisory_xact_lock(scope.lock_id())))
        return bool(acquired)
    if local_key in _local_locks:
        return False
    _local_locks.add(local_key)
    return True


async def _find(session: AsyncSession, scope: Scope) -> IdempotencyRecord | None:
    query = select(IdempotencyRecord).where(
        IdempotencyRecord.user_id == scope.user_id,
        IdempotencyRecord.endpoint == scope.endpoint,
        IdempotencyRecord.key == scope.key,
    )
    record = (await session.execute(query)).scalar_one_or_none()
    if record is not None and record.created_at < utcnow() - RETENTION:
        await session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.id == record.id))
        return None
    return record


def _record(scope: Scope, answer: Answer) -> IdempotencyRecord:
    return IdempotencyRecord(
        user_id=scope.user_id,
        endpoint=scope.endpoint,
        key=scope.key,
        fingerprint=scope.fingerprint,
        status_code=answer.status_code,
        body=answer.body.decode(),
        location=answer.location,
    )


async def _record_failure(session: AsyncSession, scope: Scope, exc: AppError) -> None:
    """A final client error (a taken title, a missing post) is an answer to replay, too."""
    body = json.dumps({"detail": exc.detail, "error_code": exc.error_code}).encode()
    session.add(_record(scope, Answer(exc.status_code, body)))
    try:
        await session.commit()
    except IntegrityError:  # a concurrent duplicate recorded it first
        await session.rollback()


async def purge_expired(session: AsyncSession) -> int:
    """Delete records older than the retention; returns how many."""
    result = await session.execute(
        delete(IdempotencyRecord)
        .where(IdempotencyRecord.created_at < utcnow() - RETENTION)
        .returning(IdempotencyRecord.id)
    )
    await session.commit()
    return len(result.all())
