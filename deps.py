"""FastAPI dependencies and their `Annotated` aliases."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Annotated

from fastapi import Depends
from fastapi.security import OAuth2PasswordBearer
from fastapi.security.base import SecurityBase
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import HTTPConnection

import crud
from config import Settings
from database import Database, get_db
from errors import InsufficientPermissions, InvalidToken, NotAuthenticated
from models import User
from ratelimit import VERIFIED_TOKEN, LoginAccountThrottle
from security import decode_access_token

SessionDep = Annotated[AsyncSession, Depends(get_db)]

oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/auth/login", auto_error=False)


async def get_settings(connection: HTTPConnection) -> Settings:
    """The app's settings (async: a sync dependency would cost a threadpool hop)."""
    settings: Settings = connection.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings)]

LoginAttempt = Callable[[str], AbstractAsyncContextManager[None]]


async def get_login_attempt(connection: HTTPConnection) -> LoginAttempt:
    """`async with login_attempt(username):` around a login: the per-account throttle."""
    throttle: LoginAccountThrottle = connection.app.state.login_throttle
    return partial(throttle.attempt, connection.scope)


LoginAttemptDep = Annotated[LoginAttempt, Depends(get_login_attempt)]


async def get_database(connection: HTTPConnection) -> Database:
    """The app's database, for reads that need no session (Database.fetch_all)."""
    database: Database = connection.app.state.database
    return database


DatabaseDep = Annotated[Database, Depends(get_database)]


def database_of(connection: HTTPConnection) -> Database:
    """The app's database as a plain call: the hot routes take the `Request` (free) instead of
    `DatabaseDep`, as FastAPI spends ~10 µs a request solving even a trivial dependency."""
    database: Database = connection.app.state.database
    return database


class OptionalBearerUser(SecurityBase):
    """The caller if a token was sent; a sent but bad token is always 401.

    The security scheme is itself the dependency that resolves the user: FastAPI solves one
    dependency per request where a token scheme plus a user dependency on it made two. The
    OpenAPI document sees `oauth2_scheme`'s scheme (same name and flow). It needs no session of
    the request's: anonymous reads then open none at all."""

    def __init__(self, scheme: OAuth2PasswordBearer) -> None:
        self.scheme = scheme
        self.model = scheme.model
        self.scheme_name = scheme.scheme_name

    async def __call__(self, connection: HTTPConnection) -> User | None:
        token = await self.scheme(connection)
        if token is None:
            return None
        state = connection.app.state
        verified = connection.scope.get("state", {}).get(VERIFIED_TOKEN)
        if verified is not None and verified[0] == token:
            user_id: int = verified[1]  # the rate limiter decoded this very token already
        else:
            user_id = decode_access_token(token, state.settings.jwt_secret)
        user = await crud.get_user(state.database, user_id)
        if user is None:
            raise InvalidToken()
        connection.state.user_id = user.id  # for the access log (observability.py)
        return user


get_optional_user = OptionalBearerUser(oauth2_scheme)
OptionalUser = Annotated[User | None, Depends(get_optional_user)]


async def reject_unsound_token(
    connection: HTTPConnection,
    token: Annotated[str | None, Depends(oauth2_scheme)],
) -> None:
    """A sent token must be sound (signature, algorithm, claims, expiry), checked without the
    database: for liveness, readiness, metrics and the docs, which show nothing of a user's and
    must answer while the database is down."""
    if token is not None:
        decode_access_token(token, connection.app.state.settings.jwt_secret)


async def check_metrics_access(
    connection: HTTPConnection,
    token: Annotated[str | None, Depends(oauth2_scheme)],
) -> None:
    """With METRICS_TOKEN set, /metrics answers only to `Bearer <METRICS_TOKEN>` (a user's
    token is not enough); without it, like the other operational endpoints."""
    expected = connection.app.state.settings.metrics_token
    if expected is None:
        await reject_unsound_token(connection, token)
        return
    if token is None:
        raise NotAuthenticated()
    if not secrets.compare_digest(token.encode(), expected.encode()):
        raise InvalidToken()


async def get_current_user(user: OptionalUser) -> User:
    if user is None:
        raise NotAuthenticated()
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


def require_role(role: str) -> Callable[[User], Awaitable[User]]:
    """A dependency that admits only callers with `role`."""

    async def dependency(user: CurrentUser) -> User:
        if user.role != role:
            raise InsufficientPermissions()
        return user

    return dependency


AdminUser = Annotated[User, Depends(require_role("admin"))]
