"""Registration, login, the caller's account, bearer tokens and password checking."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import jwt
import pytest
from conftest import PASSWORD, TEST_SECRET, create_post, login, register
from core_helpers import assert_error, me, parse_time
from fastapi import FastAPI
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from sqlalchemy import delete, select, update

import crud
import security
from errors import InvalidCredentials, InvalidToken, TokenExpired
from models import User

USER_FIELDS = {"id", "username", "email", "role", "created_at"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def sign(claims: dict[str, Any], key: str = TEST_SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def claims_for(user_id: int, **overrides: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    claims: dict[str, Any] = {"sub": str(user_id), "iat": now, "exp": now + timedelta(minutes=5)}
    claims.update(overrides)
    return {key: value for key, value in claims.items() if value is not None}


def unsigned_token(claims: dict[str, Any]) -> str:
    """A token with `alg: none` and no signature, encoded by hand."""

    def part(data: dict[str, Any]) -> str:
        raw = json.dumps(data, default=lambda d: int(d.timestamp())).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


# --- register ----------------------------------------------------------------------------------


async def test_register_returns_the_user_without_password(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/auth/register",
        json={"username": "Alice.W-1", "email": "Alice.W@Example.COM", "password": PASSWORD},
    )
    assert response.status_code == 201, response.text
    user = response.json()
    assert set(user) == USER_FIELDS
    assert isinstance(user["id"], int)
    assert user["username"] == "Alice.W-1"  # shown as registered
    assert user["email"] == "alice.w@example.com"  # stored lower-case
    assert user["role"] == "user"
    created = parse_time(user["created_at"])
    assert abs(datetime.now(UTC) - created) < timedelta(minutes=1)
    assert PASSWORD not in response.text
    assert "argon2" not in response.text
    assert "password" not in response.text


async def test_register_ignores_server_owned_fields(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/auth/register",
        json={
            "username": "mallory",
            "email": "mallory@example.com",
            "password": PASSWORD,
            "role": "admin",
            "id": 777,
            "created_at": "2000-01-01T00:00:00Z",
            "password_hash": "$argon2id$forged",
        },
    )
    assert response.status_code == 201, response.text
    user = response.json()
    assert user["role"] == "user"
    assert user["id"] != 777
    assert parse_time(user["created_at"]).year > 2000
    caller = await me(client, await login(client, "mallory"))  # the real password still works
    assert caller["role"] == "user"


async def test_register_username_taken_case_insensitively(client: httpx.AsyncClient) -> None:
    await register(client, "alice")
    for username in ("alice", "Alice", "ALICE"):
        response = await client.post(
            "/auth/register",
            json={
                "username": username,
                "email": f"other-{username}@example.com",
                "password": PASSWORD,
            },
        )
        assert_error(response, 409, "USERNAME_TAKEN")
    # the first account is untouched and still the only one answering to the name
    headers = await login(client, "ALICE")
    assert (await me(client, headers))["email"] == "alice@example.com"


async def test_register_email_taken_in_another_case(client: httpx.AsyncClient) -> None:
    await register(client, "alice", email="alice@example.com")
    response = await client.post(
        "/auth/register",
        json={"username": "alice2", "email": "ALICE@Example.Com", "password": PASSWORD},
    )
    assert_error(response, 409, "EMAIL_TAKEN")
    # alice2 was not created
    failed = await client.post("/auth/login", data={"username": "alice2", "password": PASSWORD})
    assert failed.status_code == 401


INVALID_REGISTRATIONS = [
    ("username", "ab"),
    ("username", "a" * 51),
    ("username", "has space"),
    ("username", "slash/name"),
    ("username", "at@sign"),
    ("username", "percent%"),
    ("username", "ünïcode"),
    ("username", ""),
    ("email", "not-an-email"),
    ("email", "missing@"),
    ("email", "@example.com"),
    ("email", ""),
    ("email", "nul\x00@example.com"),
    ("password", "seven77"),
    ("password", "x" * 129),
    ("password", ""),
]


async def test_register_rejects_invalid_fields(
    client: httpx.AsyncClient, subtests: pytest.Subtests
) -> None:
    valid = {"username": "valid_name", "email": "valid@example.com", "password": PASSWORD}
    for field, value in INVALID_REGISTRATIONS:
        with subtests.test(field=field, value=value[:20]):
            response = await client.post("/auth/register", json={**valid, field: value})
            error = assert_error(response, 422, "VALIDATION_ERROR")
            assert any(item["loc"] == ["body", field] for item in error["detail"]), error
    # nothing was created: the valid name and email are still free
    assert (await client.post("/auth/register", json=valid)).status_code == 201


async def test_register_rejects_missing_fields(client: httpx.AsyncClient) -> None:
    response = await client.post("/auth/register", json={"username": "alice"})
    error = assert_error(response, 422, "VALIDATION_ERROR")
    locs = {tuple(item["loc"]) for item in error["detail"]}
    assert {("body", "email"), ("body", "password")} <= locs


async def test_register_accepts_the_boundaries(client: httpx.AsyncClient) -> None:
    for username, password in (("abc", "x" * 8), ("a" * 50, "y" * 128), ("a.b_c-D9", PASSWORD)):
        user = await register(client, username, password=password)
        assert user["username"] == username
        assert (await login(client, username, password=password))["Authorization"]


# --- login ---------------------------------------------------------------------------------------


async def test_login_returns_a_bearer_token(client: httpx.AsyncClient) -> None:
    user = await register(client, "alice")
    response = await client.post("/auth/login", data={"username": "alice", "password": PASSWORD})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 30 * 60
    claims = jwt.decode(body["access_token"], TEST_SECRET, algorithms=["HS256"])
    assert claims["sub"] == str(user["id"])
    assert claims["exp"] - claims["iat"] == body["expires_in"]
    assert (await me(client, bearer(body["access_token"])))["id"] == user["id"]


@pytest.mark.parametrize("settings_overrides", [{"access_token_expire_minutes": 7}])
async def test_login_expires_in_follows_the_setting(client: httpx.AsyncClient) -> None:
    await register(client, "alice")
    response = await client.post("/auth/login", data={"username": "alice", "password": PASSWORD})
    assert response.json()["expires_in"] == 7 * 60


async def test_login_username_is_case_insensitive(client: httpx.AsyncClient) -> None:
    user = await register(client, "Alice")
    for spelling in ("alice", "ALICE", "aLiCe"):
        headers = await login(client, spelling)
        caller = await me(client, headers)
        assert caller["id"] == user["id"]
        assert caller["username"] == "Alice"


async def test_login_failures_are_indistinguishable(client: httpx.AsyncClient) -> None:
    await register(client, "alice")
    unknown = await client.post("/auth/login", data={"username": "nobody", "password": PASSWORD})
    wrong = await client.post("/auth/login", data={"username": "alice", "password": "wrong-pass"})
    odd = await client.post("/auth/login", data={"username": "ali\x00ce", "password": PASSWORD})
    for response in (unknown, wrong, odd):
        assert_error(response, 401, "INVALID_CREDENTIALS")
        assert response.headers["www-authenticate"] == "Bearer"
    assert unknown.json() == wrong.json() == odd.json()
    assert unknown.content == wrong.content


async def test_login_is_a_form_not_json(client: httpx.AsyncClient) -> None:
    await register(client, "alice")
    response = await client.post("/auth/login", json={"username": "alice", "password": PASSWORD})
    assert_error(response, 422, "VALIDATION_ERROR")
    missing = await client.post("/auth/login", data={"username": "alice"})
    error = assert_error(missing, 422, "VALIDATION_ERROR")
    assert any(item["loc"] == ["body", "password"] for item in error["detail"])


# --- /users/me and tokens ------------------------------------------------------------------------


@pytest.fixture
async def alice(client: httpx.AsyncClient) -> dict[str, Any]:
    return await register(client, "alice")


async def test_me_returns_the_caller(client: httpx.AsyncClient, alice: dict[str, Any]) -> None:
    await register(client, "bob")
    response = await client.get("/users/me", headers=await login(client, "alice"))
    assert response.status_code == 200
    assert response.json() == alice
    assert (await me(client, await login(client, "bob")))["username"] == "bob"


async def test_me_without_token_is_401(client: httpx.AsyncClient) -> None:
    response = await client.get("/users/me")
    assert_error(response, 401, "NOT_AUTHENTICATED")
    assert response.headers["www-authenticate"] == "Bearer"


async def test_me_with_expired_token(client: httpx.AsyncClient, alice: dict[str, Any]) -> None:
    past = datetime.now(UTC) - timedelta(hours=2)
    token = sign(claims_for(alice["id"], iat=past, exp=past + timedelta(hours=1)))
    response = await client.get("/users/me", headers=bearer(token))
    assert_error(response, 401, "TOKEN_EXPIRED")
    assert response.headers["www-authenticate"] == "Bearer"
    # the same claims, still valid, are accepted: the expiry is what failed
    fresh = sign(claims_for(alice["id"]))
    assert (await client.get("/users/me", headers=bearer(fresh))).status_code == 200


def _bad_tokens(user_id: int) -> dict[str, str]:
    return {
        "garbage": "garbage",
        "three garbage parts": "abc.def.ghi",
        "empty": "",
        "other key": sign(claims_for(user_id), key="another-secret-key-that-is-long-enough-42"),
        "alg none": unsigned_token(claims_for(user_id)),
        "alg HS512 with the right key": sign(claims_for(user_id), algorithm="HS512"),
        "no sub": sign(claims_for(user_id, sub=None)),
        "no exp": sign(claims_for(user_id, exp=None)),
        "no iat": sign(claims_for(user_id, iat=None)),
        "sub not a number": sign(claims_for(user_id, sub="alice")),
        "sub negative": sign(claims_for(user_id, sub="-1")),
        "tampered payload": _tampered(sign(claims_for(user_id)), user_id + 1),
    }


def _tampered(token: str, new_sub: int) -> str:
    header, _payload, signature = token.split(".")
    payload = base64.urlsafe_b64encode(json.dumps({"sub": str(new_sub)}).encode()).decode()
    return f"{header}.{payload.rstrip('=')}.{signature}"


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_me_with_invalid_tokens(client: httpx.AsyncClient, alice: dict[str, Any]) -> None:
    for name, token in _bad_tokens(alice["id"]).items():
        response = await client.get("/users/me", headers=bearer(token))
        assert response.status_code == 401, (name, response.text)
        assert response.json()["error_code"] == "INVALID_TOKEN", name
        assert response.headers["www-authenticate"] == "Bearer", name


async def test_token_of_a_deleted_user_is_invalid(
    client: httpx.AsyncClient, app: FastAPI, alice: dict[str, Any]
) -> None:
    headers = await login(client, "alice")
    assert (await client.get("/users/me", headers=headers)).status_code == 200
    async with app.state.database.sessionmaker() as session:
        await session.execute(delete(User).where(User.id == alice["id"]))
        await session.commit()
    response = await client.get("/users/me", headers=headers)
    assert_error(response, 401, "INVALID_TOKEN")
    assert response.headers["www-authenticate"] == "Bearer"
    listing = await client.get("/posts", headers=headers)
    assert_error(listing, 401, "INVALID_TOKEN")


async def test_a_sent_bad_token_is_401_on_public_endpoints(
    client: httpx.AsyncClient, alice: dict[str, Any], subtests: pytest.Subtests
) -> None:
    headers = await login(client, "alice")
    post = await create_post(client, headers, "Public")
    login_form = {"data": {"username": "alice", "password": PASSWORD}}
    signup = {"json": {"username": "carol", "email": "c@example.com", "password": PASSWORD}}
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/posts", {}),
        ("GET", f"/posts/{post['id']}", {}),
        ("GET", "/posts?q=public&sort=title", {}),
        ("POST", "/auth/login", login_form),
        ("POST", "/auth/register", signup),
        # operational endpoints and the docs check a token without the database
        ("GET", "/", {}),
        ("GET", "/health/ready", {}),
        ("GET", "/metrics", {}),
        ("GET", "/openapi.json", {}),
        ("GET", "/docs", {}),
        ("GET", "/docs/oauth2-redirect", {}),
        ("GET", "/redoc", {}),
    ]
    expired = sign(claims_for(alice["id"], exp=datetime.now(UTC) - timedelta(seconds=5)))
    forged = sign(claims_for(alice["id"]), key="x" * 40)
    for method, url, kwargs in calls:
        with subtests.test(method=method, url=url):
            for token, code in (("garbage", "INVALID_TOKEN"), (forged, "INVALID_TOKEN")):
                response = await client.request(method, url, headers=bearer(token), **kwargs)
                assert_error(response, 401, code)
                assert response.headers["www-authenticate"] == "Bearer"
            response = await client.request(method, url, headers=bearer(expired), **kwargs)
            assert_error(response, 401, "TOKEN_EXPIRED")
    # without a token the same calls are fine (and carol was never registered above)
    for method, url, kwargs in calls:
        response = await client.request(method, url, **kwargs)
        assert response.status_code in (200, 201), (url, response.text)


# --- security.py ---------------------------------------------------------------------------------


def test_access_token_round_trip() -> None:
    token, lifetime = security.create_access_token(42, TEST_SECRET, 15)
    assert lifetime == 15 * 60
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    assert security.decode_access_token(token, TEST_SECRET) == 42
    claims = jwt.decode(token, TEST_SECRET, algorithms=["HS256"])
    assert set(claims) == {"sub", "iat", "exp"}
    assert claims["sub"] == "42"
    assert claims["exp"] - claims["iat"] == lifetime


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_decode_pins_the_algorithm() -> None:
    assert security.JWT_ALGORITHM == "HS256"
    for algorithm in ("HS384", "HS512"):
        token = sign(claims_for(1), algorithm=algorithm)
        with pytest.raises(InvalidToken):
            security.decode_access_token(token, TEST_SECRET)
    with pytest.raises(InvalidToken):
        security.decode_access_token(unsigned_token(claims_for(1)), TEST_SECRET)


@pytest.mark.parametrize("missing", ["sub", "exp", "iat"])
def test_decode_requires_claims(missing: str) -> None:
    token = sign(claims_for(1, **{missing: None}))
    with pytest.raises(InvalidToken):
        security.decode_access_token(token, TEST_SECRET)


def test_decode_expired_and_forged() -> None:
    past = datetime.now(UTC) - timedelta(minutes=10)
    with pytest.raises(TokenExpired):
        security.decode_access_token(
            sign(claims_for(1, iat=past, exp=past + timedelta(minutes=1))), TEST_SECRET
        )
    with pytest.raises(InvalidToken):
        security.decode_access_token(sign(claims_for(1)), "another-secret-key-" * 3)
    for sub in ("abc", "", "1.5", "-3"):
        with pytest.raises(InvalidToken):
            security.decode_access_token(sign(claims_for(1, sub=sub)), TEST_SECRET)


def test_a_remembered_token_still_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    """security._verified_token keeps verified tokens; the expiry is checked on every use."""
    now = datetime.now(UTC)
    token = sign(claims_for(7, iat=now, exp=now + timedelta(seconds=60)))
    assert security.decode_access_token(token, TEST_SECRET) == 7
    assert security.decode_access_token(token, TEST_SECRET) == 7  # from memory
    later = (now + timedelta(seconds=60)).timestamp()
    monkeypatch.setattr(security, "time", SimpleNamespace(time=lambda: later))
    with pytest.raises(TokenExpired):
        security.decode_access_token(token, TEST_SECRET)
    # remembered per secret too: the same text under another key is still refused
    with pytest.raises(InvalidToken):
        security.decode_access_token(token, "another-secret-key-" * 3)


def test_password_hashing() -> None:
    hashed = security.hash_password("correct horse")
    assert hashed.startswith("$argon2")
    assert "correct horse" not in hashed
    assert security.verify_and_update_password("correct horse", hashed)[0]
    assert not security.verify_and_update_password("wrong horse", hashed)[0]
    assert security.hash_password("correct horse") != hashed  # salted


class _CountingVerify:
    def __init__(self) -> None:
        self.hashes: list[str] = []
        self.real = security.verify_and_update_password

    def __call__(self, password: str, password_hash: str) -> tuple[bool, str | None]:
        self.hashes.append(password_hash)
        return self.real(password, password_hash)


async def test_login_moves_a_hash_made_with_other_parameters_over(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    """A hash from before a change of the argon2 cost settings still verifies, and the login
    stores a new one with the current settings."""
    await register(client, "alice")
    older = PasswordHash((Argon2Hasher(time_cost=2, memory_cost=2048, parallelism=1),))
    async with app.state.database.sessionmaker() as session:
        await session.execute(
            update(User).where(User.username == "alice").values(password_hash=older.hash(PASSWORD))
        )
        await session.commit()
    assert (
        await client.post("/auth/login", data={"username": "alice", "password": PASSWORD})
    ).status_code == 200
    async with app.state.database.sessionmaker() as session:
        stored = await session.scalar(select(User.password_hash).where(User.username == "alice"))
    assert stored is not None and "m=2048" not in stored
    assert security.password_hasher.hash(PASSWORD).split("$")[3] == stored.split("$")[3]
    assert security.verify_and_update_password(PASSWORD, stored)[0]
    assert (
        await client.post("/auth/login", data={"username": "alice", "password": PASSWORD})
    ).status_code == 200


async def test_authenticate_unknown_user_still_verifies(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = _CountingVerify()
    monkeypatch.setattr(security, "verify_and_update_password", counter)
    async with app.state.database.sessionmaker() as session:
        with pytest.raises(InvalidCredentials):
            await crud.authenticate(session, "nobody", PASSWORD)
    assert counter.hashes == [security.DUMMY_PASSWORD_HASH]
    assert security.DUMMY_PASSWORD_HASH.startswith("$argon2")


async def test_login_verifies_once_for_unknown_and_wrong(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    await register(client, "alice")
    counter = _CountingVerify()
    monkeypatch.setattr(security, "verify_and_update_password", counter)
    unknown = await client.post("/auth/login", data={"username": "ghost", "password": PASSWORD})
    assert unknown.status_code == 401
    assert counter.hashes == [security.DUMMY_PASSWORD_HASH]
    wrong = await client.post("/auth/login", data={"username": "alice", "password": "nope-nope"})
    assert wrong.status_code == 401
    assert len(counter.hashes) == 2
    assert counter.hashes[1] != security.DUMMY_PASSWORD_HASH
    assert counter.hashes[1].startswith("$argon2")
    ok = await client.post("/auth/login", data={"username": "alice", "password": PASSWORD})
    assert ok.status_code == 200
    assert len(counter.hashes) == 3
