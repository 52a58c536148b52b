"""Password hashing (argon2 via pwdlib) and JWT access tokens (PyJWT, HS256)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jwt
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from errors import InvalidToken, TokenExpired

JWT_ALGORITHM = "HS256"

password_hasher = PasswordHash((Argon2Hasher(),))
# Verified against when the username is unknown, so both failures cost the same time.
DUMMY_PASSWORD_HASH = password_hasher.hash("not-a-real-password-only-for-timing")


def hash_password(password: str) -> str:
    return password_hasher.hash(password)


def verify_password(password: str, password_hash: str) -> bool:
    return password_hasher.verify(password, password_hash)


def create_access_token(user_id: int, secret: str, expires_minutes: int) -> tuple[str, int]:
    """A signed token for the user and its lifetime in seconds."""
    now = datetime.now(UTC)
    lifetime = timedelta(minutes=expires_minutes)
    payload = {"sub": str(user_id), "iat": now, "exp": now + lifetime}
    return jwt.encode(payload, secret, algorithm=JWT_ALGORITHM), int(lifetime.total_seconds())


def decode_access_token(token: str, secret: str) -> int:
    """The user id a token was issued for; raises TokenExpired or InvalidToken."""
    try:
        payload = jwt.decode(
            token,
            secret,
            algorithms=[JWT_ALGORITHM],
            options={"require": ["sub", "exp", "iat"]},
        )
    except jwt.ExpiredSignatureError:
        raise TokenExpired() from None
    except jwt.PyJWTError:
        raise InvalidToken() from None
    subject = payload["sub"]
    if not isinstance(subject, str) or not subject.isdigit():
        raise InvalidToken()
    return int(subject)
