"""Registration, login and the caller's own account."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, status

import crud
from deps import CurrentUser, LoginAttemptDep, SessionDep, SettingsDep
from errors import error_responses
from openapi_document import SIGN_IN
from schemas import LoginForm, Token, UserCreate, UserRead
from security import create_access_token

router = APIRouter(tags=["auth"])


@router.post(
    "/auth/register",
    status_code=status.HTTP_201_CREATED,
    response_model=UserRead,
    operation_id="register",
    openapi_extra=SIGN_IN,
    responses=error_responses(409, 413, _409="USERNAME_TAKEN or EMAIL_TAKEN"),
)
async def register(data: UserCreate, session: SessionDep) -> object:
    """Create an account."""
    return await crud.create_user(session, data)


@router.post(
    "/auth/login",
    response_model=Token,
    operation_id="login",
    openapi_extra=SIGN_IN,
    responses=error_responses(
        401,
        413,
        429,
        _401="INVALID_CREDENTIALS (or a bad bearer token)",
        _429="RATE_LIMITED: too many logins from this address, or too many failed logins for "
        "this username (RATE_LIMIT_LOGIN_ACCOUNT, from any address); see Retry-After",
    ),
)
async def login(
    form: Annotated[LoginForm, Form()],
    session: SessionDep,
    settings: SettingsDep,
    login_attempt: LoginAttemptDep,
) -> Token:
    """Exchange a username and password for a bearer token (OAuth2 password flow)."""
    async with login_attempt(form.username):
        user = await crud.authenticate(session, form.username, form.password)
    token, expires_in = create_access_token(
        user.id, settings.jwt_secret, settings.access_token_expire_minutes
    )
    return Token(access_token=token, expires_in=expires_in)


@router.get("/users/me", response_model=UserRead, operation_id="read_me")
async def read_me(user: CurrentUser) -> object:
    """The signed-in caller."""
    return user
