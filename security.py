"""Password hashing (argon2 via pwdlib) and JWT access tokens (PyJWT, HS256)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import jwt
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from errors import InvalidToken, TokenExpired
from process_memory import keep_large_blocks_unmapped
from schemas import MAX_ID

JWT_ALGORITHM = "HS256"

# Argon2id at OWASP's recommended minimum (19 MiB, 2 passes, 1 lane) rather than pwdlib's
# default 64 MiB: each verification in flight holds that memory, and a worker verifying a few
# logins at once would otherwise add hundreds of MB. Hashes made with other parameters still
# verify (the parameters are stored in the hash).
password_hasher = PasswordHash((Argon2Hasher(time_cost=2, memory_cost=19_456, parallelism=1),))
# ... and that memory is returned when a hash is done, not kept by the process (process_memory).
keep_large_blocks_unmapped()
# Verified against when the username is unknown, so both failures cost the same time.
DUMMY_PASSWORD_HASH = password_hasher.hash("not-a-real-password-only-for-timing")


def hash_password(password: str) -> str:
    return password_hasher.hash(password)


def verify_and_update_password(password: str, password_hash: str) -> tuple[bool, str | None]:
    """Whether the password matches, and a new hash when the stored one was made with other
    parameters (e.g. before the cost settings above): logins move old hashes over."""
    return password_hasher.verify_and_update(password, password_hash)


def create_access_token(user_id: int, secret: str, expires_minutes: int) -> tuple[str, int]:
    """A signed token for the user and its lifetime in seconds."""
    now = datetime.now(UTC)
    lifetime = timedelta(minutes=expires_minutes)
    payload = {"sub": str(user_id), "iat": now, "exp": now + lifetime}
    return jwt.encode(payload, secret, algorithm=JWT_ALGORITHM), int(lifetime.total_seconds())


def decode_access_token(token: str, secret: str) -> int:
    """The user id a token was issued for; raises TokenExpired or InvalidToken."""
    return decode_access_token_until(token, secret)[0]


def decode_access_token_until(token: str, secret: str) -> tuple[int, float]:
    """The user id a token was issued for and when it expires (Unix time); raises TokenExpired
    or InvalidToken."""
    user_id, expires_at = _verified_token(token, secret)
    if expires_at <= time.time():  # PyJWT's own rule (no leeway), for tokens verified earlier
        raise TokenExpired()
    return user_id, expires_at


# A client sends the same token with every request of its lifetime; verifying it (base64, two
# JSON documents, an HMAC) costs more than the rest of a rate-limit check, so a token that
# verified is remembered, by its full text, with its expiry. Bad tokens raise and are never kept.
@lru_cache(maxsize=4096)
def _verified_token(token: str, secret: str) -> tuple[int, float]:
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
    # str.isdigit admits "²" (int() then fails) and "٢" (int() reads 2): ASCII digits only,
    # and an id the database can hold.
    if not isinstance(subject, str) or not subject.isascii() or not subject.isdigit():
        raise InvalidToken()
    if len(subject) > 10 or not 1 <= int(subject) <= MAX_ID:
        raise InvalidToken()
    return int(subject), float(payload["exp"])
