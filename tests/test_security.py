"""OWASP API Security Top 10 (2023) guards that no other test module pins (see SECURITY.md).

Each test names the guard it pins; removing that guard makes the test fail.
"""

from __future__ import annotations

import base64
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
import websockets
from core_helpers import assert_error, me
from fastapi import FastAPI
from sqlalchemy import delete

import security
from logging_setup import configure_logging
from models import User
from realtime import LiveSocket, LocalHub, RedisHub
from schemas import MAX_ID, MAX_SKIP
from tests.conftest import (
    PASSWORD,
    TEST_SECRET,
    LiveServer,
    create_post,
    login,
    register,
)

FOREIGN_KEY = "another-secret-key-that-is-long-enough-0123456789"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def token_of(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


def claims_for(user_id: int, **overrides: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    claims: dict[str, Any] = {"sub": str(user_id), "iat": now, "exp": now + timedelta(minutes=5)}
    claims.update(overrides)
    return claims


def unsigned_token(user_id: int) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    now = int(datetime.now(UTC).timestamp())
    claims = {"sub": str(user_id), "iat": now, "exp": now + 300}
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


# --- API1: object-level authorization -----------------------------------------------------------


async def test_object_level_authorization_on_every_post_and_comment_path(
    client: httpx.AsyncClient,
    user_headers: dict[str, str],
    other_headers: dict[str, str],
    admin_headers: dict[str, str],
) -> None:
    """Pins crud.get_visible_post/_visible_to (drafts 404), crud._can_write (403) and
    crud.delete_comment (comment author, post owner, admin; comment must belong to the post)."""
    post = await create_post(client, user_headers, "Alice in public")
    draft = await create_post(client, user_headers, "Zanzibar draft", published=False)
    comments: dict[int, dict[str, Any]] = {}
    for target in (post, draft):
        response = await client.post(
            f"/posts/{target['id']}/comments", json={"text": "mine"}, headers=user_headers
        )
        assert response.status_code == 201, response.text
        comments[target["id"]] = response.json()
    p, d = post["id"], draft["id"]
    body: dict[str, Any] = {"content": "hacked", "published": True}
    comment_body: dict[str, Any] = {"text": "sneaky"}
    no_body: dict[str, Any] | None = None

    # Someone else's draft: every path answers exactly as if it did not exist.
    for headers in (None, other_headers):
        for url in (f"/posts/{d}", f"/posts/{d}/comments"):
            response = await client.get(url, headers=headers)
            assert_error(response, 404, "POST_NOT_FOUND")
    for method, url, payload in (
        ("PUT", f"/posts/{d}", body),
        ("PATCH", f"/posts/{d}", body),
        ("DELETE", f"/posts/{d}", no_body),
        ("POST", f"/posts/{d}/publish", no_body),
        ("POST", f"/posts/{d}/comments", comment_body),
        ("DELETE", f"/posts/{d}/comments/{comments[d]['id']}", no_body),
    ):
        response = await client.request(method, url, headers=other_headers, json=payload)
        assert_error(response, 404, "POST_NOT_FOUND")
        response = await client.request(method, url, json=payload)
        assert_error(response, 401, "NOT_AUTHENTICATED")

    # Someone else's published post: visible, but not writable.
    for method, url, payload in (
        ("PUT", f"/posts/{p}", body),
        ("PATCH", f"/posts/{p}", {"published": False}),
        ("DELETE", f"/posts/{p}", no_body),
        ("POST", f"/posts/{p}/publish", no_body),
        ("DELETE", f"/posts/{p}/comments/{comments[p]['id']}", no_body),
    ):
        response = await client.request(method, url, headers=other_headers, json=payload)
        assert_error(response, 403, "INSUFFICIENT_PERMISSIONS")
        response = await client.request(method, url, json=payload)
        assert_error(response, 401, "NOT_AUTHENTICATED")
    # A comment reached through another post's path is not found, even by its author.
    for headers in (other_headers, user_headers):
        response = await client.delete(f"/posts/{p}/comments/{comments[d]['id']}", headers=headers)
        assert_error(response, 404, "COMMENT_NOT_FOUND")

    # Lists, searches and counts never reveal another user's draft.
    for headers in (None, other_headers):
        for query in ("", "?author=alice&count=true", "?q=Zanzibar&count=true", "?sort=title"):
            response = await client.get(f"/posts{query}", headers=headers)
            assert response.status_code == 200, response.text
            assert d not in [item["id"] for item in response.json()], query
            if "count" in query:
                assert int(response.headers["X-Total-Count"]) == (1 if "alice" in query else 0)
    response = await client.get("/posts?published=false&count=true", headers=other_headers)
    assert response.json() == [] and response.headers["X-Total-Count"] == "0"

    # Nothing changed, and the owner and an admin still see everything.
    for headers in (user_headers, admin_headers):
        assert (await client.get(f"/posts/{d}", headers=headers)).json() == draft
        assert (await client.get(f"/posts/{p}", headers=headers)).json() == post
        for target in (p, d):
            listed = await client.get(f"/posts/{target}/comments", headers=headers)
            assert listed.json() == [comments[target]]
    drafts = await client.get("/posts?published=false", headers=admin_headers)
    assert [item["id"] for item in drafts.json()] == [d]


# --- API3: object property level authorization --------------------------------------------------


async def test_no_body_sets_role_identity_or_anothers_published_flag(
    client: httpx.AsyncClient, user_headers: dict[str, str], other_headers: dict[str, str]
) -> None:
    """Pins the closed request schemas (schemas.UserCreate, PostCreate, PostUpdate,
    CommentCreate: unknown fields dropped), crud.create_post/create_comment taking the author
    from the token, and crud._can_write for `published`."""
    alice = await me(client, user_headers)
    bob = await me(client, other_headers)
    other_post = await create_post(client, other_headers, "Bob's post")
    forged = {
        "id": 424242,
        "role": "admin",
        "is_admin": True,
        "author": "bob",
        "author_id": bob["id"],
        "user_id": bob["id"],
        "owner_id": bob["id"],
        "post_id": other_post["id"],
        "version": 99,
    }
    response = await client.post(
        "/posts", json={**forged, "title": "Forged", "content": "x"}, headers=user_headers
    )
    assert response.status_code == 201, response.text
    post = response.json()
    assert (post["id"], post["author_id"], post["author"]) != (424242, bob["id"], "bob")
    assert post["author_id"] == alice["id"] and post["author"] == "alice"
    for method in ("PUT", "PATCH"):
        response = await client.request(
            method, f"/posts/{post['id']}", json={**forged, "content": "y"}, headers=user_headers
        )
        assert response.status_code == 200, response.text
        assert response.json()["id"] == post["id"]
        assert response.json()["author_id"] == alice["id"]
    response = await client.post(
        f"/posts/{post['id']}/comments", json={**forged, "text": "hi"}, headers=user_headers
    )
    assert response.status_code == 201, response.text
    comment = response.json()
    assert comment["post_id"] == post["id"] and comment["author_id"] == alice["id"]
    assert comment["id"] != 424242
    assert (await client.get(f"/posts/{other_post['id']}/comments")).json() == []
    response = await client.post(
        "/auth/register",
        json={**forged, "username": "mallory", "email": "m@example.com", "password": PASSWORD},
    )
    assert response.status_code == 201 and response.json()["role"] == "user"
    for headers in (user_headers, await login(client, "mallory")):
        assert (await me(client, headers))["role"] == "user"

    # `published` belongs to the owner: bob can neither hide alice's post nor publish her draft.
    draft = await create_post(client, user_headers, "Alice's draft", published=False)
    for method in ("PUT", "PATCH"):
        response = await client.request(
            method, f"/posts/{post['id']}", json={"published": False}, headers=other_headers
        )
        assert_error(response, 403, "INSUFFICIENT_PERMISSIONS")
        response = await client.request(
            method, f"/posts/{draft['id']}", json={"published": True}, headers=other_headers
        )
        assert_error(response, 404, "POST_NOT_FOUND")
    assert (await client.get(f"/posts/{post['id']}")).json()["published"] is True
    assert_error(await client.get(f"/posts/{draft['id']}"), 404, "POST_NOT_FOUND")


# --- API4: unrestricted resource consumption ----------------------------------------------------


async def test_input_size_limits(client: httpx.AsyncClient, user_headers: dict[str, str]) -> None:
    """Pins schemas.Limit/Skip/ObjectId, the Query max_lengths of routes.posts.list_posts and
    routes.comments.list_comments, schemas.Title/Content/CommentText/Username/Password."""
    post = await create_post(client, user_headers, "Sized")
    comments = f"/posts/{post['id']}/comments"
    too_big: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/posts?limit=101", {}),
        ("GET", "/posts?limit=0", {}),
        ("GET", f"/posts?skip={MAX_SKIP + 1}", {}),
        ("GET", f"{comments}?limit=101", {}),
        ("GET", f"/posts/{MAX_ID + 1}", {}),
        ("GET", "/posts?q=" + "a" * 201, {}),
        ("GET", "/posts?author=" + "a" * 51, {}),
        ("GET", "/posts?cursor=" + "a" * 513, {}),
        ("POST", "/posts", {"json": {"title": "t" * 256, "content": "x"}}),
        ("POST", "/posts", {"json": {"title": "t", "content": "x" * 100_001}}),
        ("POST", comments, {"json": {"text": "x" * 501}}),
    ]
    for method, url, kwargs in too_big:
        response = await client.request(method, url, headers=user_headers, **kwargs)
        assert_error(response, 422, "VALIDATION_ERROR")
    for field, value in (("username", "u" * 51), ("password", "p" * 129)):
        signup = {"username": "carol", "email": "carol@example.com", "password": PASSWORD}
        response = await client.post("/auth/register", json={**signup, field: value})
        assert_error(response, 422, "VALIDATION_ERROR")
    # ... and the largest allowed values are accepted, so the limits are exactly there.
    for url in ("/posts?limit=100", "/posts?q=" + "a" * 200, "/posts?author=" + "a" * 50):
        assert (await client.get(url, headers=user_headers)).status_code == 200, url
    response = await client.post(comments, json={"text": "x" * 500}, headers=user_headers)
    assert response.status_code == 201


async def test_body_size_limit_on_every_write(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    """Pins body_limit.BodyLimit (1 MiB) in the edge, before parsing and before auth."""
    post = await create_post(client, user_headers, "Target")
    big = b"x" * (1024 * 1024 + 1)
    for url in (
        "/posts",
        f"/posts/{post['id']}",
        f"/posts/{post['id']}/comments",
        "/auth/register",
        "/auth/login",
    ):
        for headers in (user_headers, {}):
            method = "PATCH" if url == f"/posts/{post['id']}" else "POST"
            response = await client.request(
                method, url, content=big, headers={**headers, "Content-Type": "application/json"}
            )
            assert_error(response, 413, "PAYLOAD_TOO_LARGE")


# --- API2: broken authentication ----------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_websocket_refuses_forged_expired_and_orphaned_tokens(
    live_server: LiveServer,
) -> None:
    """Pins routes.realtime._viewer: security.decode_access_token (HS256 only, signature,
    expiry, required claims) and the user lookup, at the WebSocket handshake."""
    async with httpx.AsyncClient(base_url=live_server.http_url) as http:
        alice = await register(http, "alice")
        alice_headers = await login(http, "alice")
        carol = await register(http, "carol")
        carol_headers = await login(http, "carol")
        post = await create_post(http, alice_headers, "Live")
    async with live_server.app.state.database.sessionmaker() as session:
        await session.execute(delete(User).where(User.id == carol["id"]))
        await session.commit()
    past = datetime.now(UTC) - timedelta(hours=2)
    tokens = {
        "expired": jwt.encode(
            claims_for(alice["id"], iat=past, exp=past + timedelta(hours=1)), TEST_SECRET
        ),
        "alg none": unsigned_token(alice["id"]),
        "foreign key": jwt.encode(claims_for(alice["id"]), FOREIGN_KEY, algorithm="HS256"),
        "HS512 with our key": jwt.encode(claims_for(alice["id"]), TEST_SECRET, algorithm="HS512"),
        "deleted user": token_of(carol_headers),
    }
    base = f"{live_server.ws_url}/ws/posts/{post['id']}"
    for name, token in tokens.items():
        code = "TOKEN_EXPIRED" if name == "expired" else "INVALID_TOKEN"
        for url, headers in ((f"{base}?token={token}", None), (base, bearer(token))):
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with websockets.connect(url, additional_headers=headers):
                    pass
            response = refused.value.response
            assert response.status_code == 401, name
            assert json.loads(response.body)["error_code"] == code, name
            assert response.headers["WWW-Authenticate"] == "Bearer"
    async with websockets.connect(f"{base}?token={token_of(alice_headers)}") as socket:
        await socket.send("hello")
        assert json.loads(await socket.recv())["type"] == "message"
    async with websockets.connect(base, additional_headers=alice_headers) as socket:
        await socket.send("hello")
        assert json.loads(await socket.recv())["type"] == "message"


async def test_a_token_subject_must_be_an_ascii_id_in_range(client: httpx.AsyncClient) -> None:
    """Pins security._verified_token: `sub` is ASCII digits naming a possible id. `str.isdigit`
    alone admits "²" (int() fails: 500), "٢" (int() reads 2: another user's token) and ids
    past the database's integer (the driver fails: 500)."""
    await register(client, "alice")
    bob = await register(client, "bob")
    assert bob["id"] == 2  # so that "٢" read as 2 would reach a user
    for subject in ("²", "٢", "\uff12", "99999999999999999999", str(MAX_ID + 1), "0", "+2", " 2"):
        token = jwt.encode(claims_for(0, sub=subject), TEST_SECRET, algorithm="HS256")
        response = await client.get("/users/me", headers=bearer(token))
        assert_error(response, 401, "INVALID_TOKEN")
        response = await client.get("/posts", headers=bearer(token))
        assert_error(response, 401, "INVALID_TOKEN")
    token = jwt.encode(claims_for(bob["id"]), TEST_SECRET, algorithm="HS256")
    assert (await me(client, bearer(token)))["username"] == "bob"


@pytest.mark.parametrize("settings_overrides", [{"rate_limit_login": "3/minute"}])
async def test_login_limit_counts_the_ip_even_with_a_valid_token(
    client: httpx.AsyncClient,
) -> None:
    """Pins ratelimit.RateLimitMiddleware.check keying the login category by IP: a token (one
    per account an attacker registers) must not buy a fresh budget of password guesses."""
    await register(client, "mallory")  # 1
    headers = await login(client, "mallory")  # 2
    guess = {"username": "victim", "password": "guess-0001"}
    response = await client.post("/auth/login", data=guess, headers=headers)  # 3
    assert_error(response, 401, "INVALID_CREDENTIALS")
    assert response.headers["X-RateLimit-Remaining"] == "0"
    response = await client.post("/auth/login", data=guess, headers=headers)
    assert_error(response, 429, "RATE_LIMITED")
    signup = {"username": "sybil", "email": "sybil@example.com", "password": PASSWORD}
    response = await client.post("/auth/register", json=signup, headers=headers)
    assert_error(response, 429, "RATE_LIMITED")
    # Reads and writes stay on the user's own budget.
    assert (await client.get("/users/me", headers=headers)).status_code == 200


async def test_register_does_the_same_work_whether_a_name_is_taken_or_not(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pins crud.create_user: the password is hashed before the insert (uniqueness comes from
    the database indexes), so a 409 costs what a 201 costs, and says no more than its code."""
    calls: list[str] = []
    real = security.hash_password

    def counting(password: str) -> str:
        calls.append(password)
        return real(password)

    monkeypatch.setattr(security, "hash_password", counting)
    await register(client, "alice", email="alice@example.com")
    attempts = [
        ({"username": "ALICE", "email": "new@example.com"}, "USERNAME_TAKEN"),
        ({"username": "zed", "email": "Alice@Example.com"}, "EMAIL_TAKEN"),
    ]
    for fields, code in attempts:
        response = await client.post("/auth/register", json={**fields, "password": PASSWORD})
        body = assert_error(response, 409, code)
        assert set(body) == {"detail", "error_code"}
        assert "alice" not in body["detail"].lower()
    assert len(calls) == 3  # one hash per attempt, taken or not


# --- API10: unsafe consumption ------------------------------------------------------------------


def test_malformed_fan_out_messages_are_dropped() -> None:
    """Pins realtime.RedisHub._on_message: what arrives over the Redis channel is validated;
    a malformed message is dropped (never kills the listener), a valid one is delivered."""
    hub = RedisHub.__new__(RedisHub)
    LocalHub.__init__(hub)
    socket = LiveSocket(websocket=None, post_id=1, user_id=None, username=None, is_admin=False)  # type: ignore[arg-type]
    hub.add(socket)
    for data in (
        "not json",
        json.dumps({"event": {"type": "message"}}),
        json.dumps({"post_id": "one", "event": {"type": "message"}}),
        json.dumps({"post_id": 1}),
        json.dumps({"post_id": 1, "event": ["not", "an", "object"]}),
        json.dumps({"post_id": 1, "event": {"no": "type"}}),
        json.dumps({"post_id": 1, "event": {"type": "post_updated"}}),
        json.dumps([1, 2, 3]),
    ):
        hub._on_message({"type": "message", "data": data})
    assert socket.queue.empty()
    valid = {"type": "message", "post_id": 1, "author": "alice", "text": "hi"}
    hub._on_message({"type": "message", "data": json.dumps({"post_id": 1, "event": valid})})
    assert socket.queue.get_nowait() == ("send", valid)


async def test_admin_only_rights_come_from_the_database_not_the_token(
    client: httpx.AsyncClient, user_headers: dict[str, str], app: FastAPI
) -> None:
    """API5: pins deps.get_optional_user loading the user (and role) from the database on every
    request: a token carrying `role: admin` grants nothing."""
    alice = await me(client, user_headers)
    other = await register(client, "bob")
    bob_headers = await login(client, "bob")
    draft = await create_post(client, bob_headers, "Bob's secret", published=False)
    claims = claims_for(alice["id"], role="admin", is_admin=True, scope="admin")
    forged = bearer(jwt.encode(claims, TEST_SECRET, algorithm="HS256"))
    assert (await me(client, forged))["role"] == "user"
    assert_error(await client.get(f"/posts/{draft['id']}", headers=forged), 404, "POST_NOT_FOUND")
    response = await client.get("/posts?published=false", headers=forged)
    assert [item["author_id"] for item in response.json()] == []
    assert other["role"] == "user"


def test_tokens_in_websocket_urls_are_not_logged(capsys: pytest.CaptureFixture[str]) -> None:
    """uvicorn logs each WebSocket handshake with its query string; a JWT there is redacted."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("INFO", "json")
        jwt_like = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"
        # A child of uvicorn's logger at INFO (an earlier test's server may have set
        # uvicorn.error itself to WARNING).
        uvicorn_logger = logging.getLogger("uvicorn.error.redaction_test")
        uvicorn_logger.setLevel(logging.INFO)
        uvicorn_logger.info(
            '%s - "WebSocket %s" [accepted]', "127.0.0.1:5000", f"/ws/posts/7?token={jwt_like}"
        )
        uvicorn_logger.info(
            '%s - "WebSocket %s" 403', "127.0.0.1:5000", f"/ws/posts/7?x=1&token={jwt_like}&y=2"
        )
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["message"] for line in lines] == [
        '127.0.0.1:5000 - "WebSocket /ws/posts/7?token=[redacted]" [accepted]',
        '127.0.0.1:5000 - "WebSocket /ws/posts/7?x=1&token=[redacted]&y=2" 403',
    ]
