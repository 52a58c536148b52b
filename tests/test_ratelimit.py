"""Rate limits (issue 4): per-client moving windows for reads, writes and login, on both
backends; the Redis outage fallback; limits shared by real worker processes."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import websockets
from core_helpers import assert_error
from fastapi import FastAPI

import redis_backend
from config import Settings
from main import create_app
from proxies import TrustedProxies, client_ip
from ratelimit import REDIS_KEY_PREFIX, request_category
from tests.conftest import (
    PASSWORD,
    TEST_REDIS_URL,
    TEST_SECRET,
    LiveServer,
    alembic_upgrade,
    create_post,
    free_port,
    login,
    need_services,
    register,
)
from tests.private_services import PrivateRedis
from tests.test_manage import private_postgres as private_postgres  # the fixture, shared
from tests.worker_processes import WorkerProcesses

RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


@asynccontextmanager
async def client_from(app: FastAPI, host: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose requests reach the app from the peer address `host`."""
    transport = httpx.ASGITransport(app=app, client=(host, 123))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


def assert_limited_headers(response: httpx.Response, limit: int) -> None:
    for name in RATE_HEADERS:
        assert name in response.headers, (name, dict(response.headers))
    assert response.headers["X-RateLimit-Limit"] == str(limit)
    assert 0 <= int(response.headers["X-RateLimit-Remaining"]) <= limit
    assert int(response.headers["X-RateLimit-Reset"]) >= 0


def assert_rate_limited(response: httpx.Response, limit: int, window: int = 60) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["error_code"] == "RATE_LIMITED"
    assert isinstance(response.json()["detail"], str)
    assert_limited_headers(response, limit)
    assert response.headers["X-RateLimit-Remaining"] == "0"
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= window
    assert 1 <= int(response.headers["X-RateLimit-Reset"]) <= window
    assert response.headers.get("X-Request-ID")


# --- reads, writes, login ---------------------------------------------------------------------


@pytest.mark.parametrize("settings_overrides", [{"rate_limit_read": "5/minute"}])
async def test_sixth_read_is_rate_limited(client: httpx.AsyncClient) -> None:
    remaining = []
    for _ in range(5):
        response = await client.get("/posts")
        assert response.status_code == 200
        assert_limited_headers(response, 5)
        assert 1 <= int(response.headers["X-RateLimit-Reset"]) <= 60
        remaining.append(int(response.headers["X-RateLimit-Remaining"]))
    assert remaining == [4, 3, 2, 1, 0]
    response = await client.get("/posts")
    assert_rate_limited(response, 5)
    # Every read shares the budget, unknown routes and HEAD included.
    assert_rate_limited(await client.get("/posts/1"), 5)
    assert_rate_limited(await client.get("/no-such-route"), 5)
    response = await client.head("/posts")
    assert response.status_code == 429
    assert_limited_headers(response, 5)
    assert int(response.headers["Retry-After"]) >= 1


@pytest.mark.parametrize(
    "settings_overrides", [{"rate_limit_read": "4/minute", "rate_limit_write": "3/minute"}]
)
async def test_write_and_read_limits_are_separate(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    for number in range(3):
        response = await client.post(
            "/posts", json={"title": f"Post {number}", "content": "x"}, headers=user_headers
        )
        assert response.status_code == 201, response.text
        assert response.headers["X-RateLimit-Limit"] == "3"
        assert response.headers["X-RateLimit-Remaining"] == str(2 - number)
    response = await client.post(
        "/posts", json={"title": "One more", "content": "x"}, headers=user_headers
    )
    assert_rate_limited(response, 3)
    # PUT, PATCH and DELETE spend the same write budget.
    assert_rate_limited(await client.patch("/posts/1", json={}, headers=user_headers), 3)
    assert_rate_limited(await client.delete("/posts/1", headers=user_headers), 3)
    # Reads still have their own, untouched budget.
    for number in range(4):
        response = await client.get("/posts", headers=user_headers)
        assert response.status_code == 200
        assert response.headers["X-RateLimit-Limit"] == "4"
        assert response.headers["X-RateLimit-Remaining"] == str(3 - number)
    assert_rate_limited(await client.get("/posts", headers=user_headers), 4)


@pytest.mark.parametrize("settings_overrides", [{"rate_limit_login": "3/minute"}])
async def test_login_and_register_share_the_login_limit(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/auth/register",
        json={"username": "carol", "email": "carol@example.com", "password": PASSWORD},
    )
    assert response.status_code == 201
    assert response.headers["X-RateLimit-Limit"] == "3"
    assert response.headers["X-RateLimit-Remaining"] == "2"
    response = await client.post("/auth/login", data={"username": "carol", "password": PASSWORD})
    assert response.status_code == 200
    assert response.headers["X-RateLimit-Remaining"] == "1"
    response = await client.post("/auth/login", data={"username": "carol", "password": "wrong-pw"})
    assert response.status_code == 401
    assert response.headers["X-RateLimit-Remaining"] == "0"
    response = await client.post(
        "/auth/register",
        json={"username": "dave", "email": "dave@example.com", "password": PASSWORD},
    )
    assert_rate_limited(response, 3)
    response = await client.post("/auth/login", data={"username": "carol", "password": PASSWORD})
    assert_rate_limited(response, 3)
    # Reads and other writes are not the login budget.
    response = await client.get("/posts")
    assert response.status_code == 200
    assert response.headers["X-RateLimit-Limit"] == "100000"


# --- who is counted ---------------------------------------------------------------------------


@pytest.mark.parametrize("settings_overrides", [{"rate_limit_read": "3/minute"}])
async def test_signed_in_users_have_their_own_budgets(
    app: FastAPI,
    client: httpx.AsyncClient,
    user_headers: dict[str, str],
    other_headers: dict[str, str],
) -> None:
    for _ in range(3):
        assert (await client.get("/users/me", headers=user_headers)).status_code == 200
    assert_rate_limited(await client.get("/users/me", headers=user_headers), 3)
    # The budget belongs to the user, wherever the request comes from.
    async with client_from(app, "203.0.113.7") as elsewhere:
        assert_rate_limited(await elsewhere.get("/posts", headers=user_headers), 3)
    # Another user, and anonymous callers (by IP), are not affected.
    for _ in range(3):
        assert (await client.get("/users/me", headers=other_headers)).status_code == 200
    for expected in ("2", "1", "0"):
        response = await client.get("/posts")
        assert response.status_code == 200
        assert response.headers["X-RateLimit-Remaining"] == expected
    assert_rate_limited(await client.get("/posts"), 3)
    # A bad token is counted against the IP (the route would answer 401).
    bad = {"Authorization": "Bearer not-a-token"}
    assert_rate_limited(await client.get("/posts", headers=bad), 3)
    async with client_from(app, "203.0.113.8") as fresh:
        response = await fresh.get("/posts", headers=bad)
        assert response.status_code == 401
        assert response.headers["X-RateLimit-Remaining"] == "2"


@pytest.mark.parametrize(
    "settings_overrides",
    [{"rate_limit_read": "2/minute", "forwarded_allow_ips": ["10.0.0.1", "10.0.0.2"]}],
)
async def test_forwarded_for_is_believed_only_from_trusted_proxies(app: FastAPI) -> None:
    async def read(http: httpx.AsyncClient, forwarded_for: str) -> httpx.Response:
        return await http.get("/posts", headers={"X-Forwarded-For": forwarded_for})

    async with client_from(app, "10.0.0.1") as proxy:
        assert (await read(proxy, "198.51.100.1")).status_code == 200
        assert (await read(proxy, "198.51.100.1")).status_code == 200
        assert_rate_limited(await read(proxy, "198.51.100.1"), 2)
        # The rightmost untrusted hop counts: a client-supplied left part changes nothing,
        # trusted proxy hops on the right are skipped.
        assert_rate_limited(await read(proxy, "192.0.2.99, 198.51.100.1"), 2)
        assert_rate_limited(await read(proxy, "198.51.100.1, 10.0.0.2"), 2)
        # Another client behind the proxy has its own budget.
        response = await read(proxy, "198.51.100.2")
        assert response.status_code == 200
        assert response.headers["X-RateLimit-Remaining"] == "1"
    # From an untrusted peer the header is ignored: its own address is the key.
    async with client_from(app, "192.0.2.50") as direct:
        assert (await read(direct, "198.51.100.3")).status_code == 200
        assert (await read(direct, "198.51.100.4")).status_code == 200
        assert_rate_limited(await read(direct, "198.51.100.5"), 2)
        assert_rate_limited(await direct.get("/posts"), 2)


# --- failed logins per account ----------------------------------------------------------------


async def try_login(http: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    return await http.post("/auth/login", data={"username": username, "password": password})


@pytest.mark.parametrize("settings_overrides", [{"rate_limit_login_account": "3/hour"}])
async def test_failed_logins_are_limited_per_account_from_any_address(app: FastAPI) -> None:
    """Each new address brought ten more guesses at the same account; now the username has a
    budget of its own, counted whether or not it exists."""
    async with client_from(app, "192.0.2.1") as first:
        for name in ("alice", "bob"):
            user = {"username": name, "email": f"{name}@example.com", "password": PASSWORD}
            assert (await first.post("/auth/register", json=user)).status_code == 201
    for number, name in enumerate(("alice", "ALICE", "Alice")):  # normalised as login matches
        async with client_from(app, f"198.51.100.{number}") as guesser:
            response = await try_login(guesser, name, "wrong-password")
            assert response.status_code == 401, response.text
            assert response.json()["error_code"] == "INVALID_CREDENTIALS"
    async with client_from(app, "203.0.113.9") as owner:
        refused = await try_login(owner, "alice", PASSWORD)  # even the right password
        assert refused.status_code == 429, refused.text
        assert refused.json()["error_code"] == "RATE_LIMITED"
        assert "username" in refused.json()["detail"]
        assert 3500 <= int(refused.headers["Retry-After"]) <= 3600
        assert (await try_login(owner, "bob", PASSWORD)).status_code == 200  # its own budget
        # A name no one holds is counted the same way: the throttle reveals nothing.
        for _ in range(3):
            assert (await try_login(owner, "nobody_here", "wrong-password")).status_code == 401
        ghost = await try_login(owner, "nobody_here", "wrong-password")
        assert ghost.status_code == 429
        assert ghost.json()["detail"].replace("nobody_here", "alice") == refused.json()[
            "detail"
        ].replace("nobody_here", "alice")


@pytest.mark.parametrize("settings_overrides", [{"rate_limit_login_account": "2/second"}])
async def test_only_failures_count_and_the_window_frees_a_slot(client: httpx.AsyncClient) -> None:
    user = {"username": "carol", "email": "carol@example.com", "password": PASSWORD}
    assert (await client.post("/auth/register", json=user)).status_code == 201
    for _ in range(4):
        assert (await try_login(client, "carol", PASSWORD)).status_code == 200
    assert (await try_login(client, "carol", "wrong-password")).status_code == 401
    assert (await try_login(client, "carol", "wrong-password")).status_code == 401
    assert (await try_login(client, "carol", PASSWORD)).status_code == 429
    await asyncio.sleep(1.1)
    assert (await try_login(client, "carol", PASSWORD)).status_code == 200


@pytest.mark.parametrize("settings_overrides", [{"rate_limit_read": "2/minute"}])
async def test_forwarded_for_is_believed_from_no_one_by_default(
    app: FastAPI, settings: Settings
) -> None:
    assert settings.forwarded_allow_ips == []
    async with client_from(app, "127.0.0.1") as local:
        headers = {"X-Forwarded-For": "198.51.100.1"}
        assert (await local.get("/posts", headers=headers)).status_code == 200
        headers = {"X-Forwarded-For": "198.51.100.2"}
        assert (await local.get("/posts", headers=headers)).status_code == 200
        assert_rate_limited(await local.get("/posts", headers={"X-Forwarded-For": "x"}), 2)


def test_client_ip_rules() -> None:
    def scope(peer: str, *forwarded: str) -> dict[str, Any]:
        headers = [(b"x-forwarded-for", value.encode()) for value in forwarded]
        return {"client": (peer, 1), "headers": headers}

    local = TrustedProxies(["127.0.0.1"])
    assert client_ip(scope("127.0.0.1", "1.2.3.4"), local) == "1.2.3.4"
    assert client_ip(scope("127.0.0.1"), local) == "127.0.0.1"
    assert client_ip(scope("9.9.9.9", "1.2.3.4"), local) == "9.9.9.9"
    network = TrustedProxies(["10.0.0.0/8"])
    assert client_ip(scope("10.1.2.3", "5.5.5.5, 6.6.6.6, 10.9.9.9"), network) == "6.6.6.6"
    # Several header lines are one list, in order.
    assert client_ip(scope("10.1.2.3", "5.5.5.5", "6.6.6.6"), network) == "6.6.6.6"
    assert client_ip(scope("10.1.2.3", "10.2.2.2, 10.3.3.3"), network) == "10.2.2.2"
    # `*` and names are not addresses: nobody is believed.
    for entries in (["*"], ["nginx"], []):
        nobody = TrustedProxies(entries)
        assert client_ip(scope("127.0.0.1", "5.5.5.5"), nobody) == "127.0.0.1", entries
    assert client_ip({"headers": []}, local) == "unknown"
    # A hop that is not an IP address never becomes the client: the walk stops there.
    assert client_ip(scope("127.0.0.1", "not-an-ip"), local) == "127.0.0.1"
    assert client_ip(scope("10.1.2.3", "5.5.5.5, not-an-ip, 10.9.9.9"), network) == "10.9.9.9"
    assert client_ip(scope("10.1.2.3", "<script>, 6.6.6.6"), network) == "6.6.6.6"
    assert client_ip(scope("10.1.2.3", "6.6.6.6 7.7.7.7"), network) == "10.1.2.3"


def test_categories() -> None:
    def category(method: str, path: str, *headers: tuple[bytes, bytes]) -> str | None:
        return request_category({"method": method, "path": path, "headers": list(headers)})

    assert category("GET", "/posts") == "read"
    assert category("HEAD", "/posts/1") == "read"
    assert category("POST", "/posts") == "write"
    assert category("DELETE", "/posts/1/comments/2") == "write"
    assert category("POST", "/auth/login") == "login"
    assert category("POST", "/auth/register/") == "login"
    assert category("GET", "/users/me") == "read"
    for path in ("/", "/health/ready", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc"):
        assert category("GET", path) is None, path
    assert category("GET", "/openapi.json") is None
    assert category("GET", "/static/swagger-ui.css") is None
    preflight = (b"access-control-request-method", b"POST")
    assert category("OPTIONS", "/posts", preflight) is None
    assert category("OPTIONS", "/posts") == "read"


@pytest.mark.parametrize(
    "settings_overrides", [{"rate_limit_read": "2/minute", "rate_limit_write": "1/minute"}]
)
async def test_exempt_paths_are_never_limited(client: httpx.AsyncClient) -> None:
    for _ in range(6):
        for path in ("/", "/health/ready", "/metrics", "/docs", "/redoc", "/openapi.json"):
            response = await client.get(path)
            assert response.status_code != 429, path
            assert "X-RateLimit-Limit" not in response.headers, path
        assert (await client.get("/static/nothing.css")).status_code != 429
    response = await client.get("/posts")
    assert response.status_code == 200
    assert response.headers["X-RateLimit-Remaining"] == "1"


@pytest.mark.parametrize(
    "settings_overrides",
    [{"rate_limit_read": "1/minute", "cors_origins": ["https://app.example"]}],
)
async def test_preflights_are_not_limited_and_429s_carry_cors_headers(
    client: httpx.AsyncClient,
) -> None:
    origin = {"Origin": "https://app.example"}
    preflight = {**origin, "Access-Control-Request-Method": "GET"}
    for _ in range(3):
        response = await client.options("/posts", headers=preflight)
        assert response.status_code == 200
    assert (await client.get("/posts", headers=origin)).status_code == 200
    response = await client.get("/posts", headers=origin)
    assert_rate_limited(response, 1)
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
    exposed = response.headers["Access-Control-Expose-Headers"]
    for name in ("Retry-After", *RATE_HEADERS):
        assert name in exposed
    assert (await client.options("/posts", headers=preflight)).status_code == 200


@pytest.mark.parametrize(
    "settings_overrides",
    [
        {
            "rate_limit_enabled": False,
            "rate_limit_read": "1/minute",
            "rate_limit_write": "1/minute",
            "rate_limit_login": "1/minute",
        }
    ],
)
async def test_disabled_means_no_headers_and_no_429(client: httpx.AsyncClient) -> None:
    for _ in range(4):
        response = await client.get("/posts")
        assert response.status_code == 200
        for name in (*RATE_HEADERS, "Retry-After"):
            assert name not in response.headers
        response = await client.post("/auth/login", data={"username": "x", "password": "y"})
        assert response.status_code == 401
        assert "X-RateLimit-Limit" not in response.headers


# --- the moving window ------------------------------------------------------------------------


@pytest.mark.parametrize("settings_overrides", [{"rate_limit_read": "5/minute"}])
async def test_reset_counts_from_the_oldest_request_in_the_window(
    client: httpx.AsyncClient,
) -> None:
    first = await client.get("/posts")
    assert first.headers["X-RateLimit-Reset"] == "60"
    await asyncio.sleep(1.2)
    second = await client.get("/posts")
    # The first request leaves the window (and frees a slot) in ~58.8 s, not 60.
    assert second.headers["X-RateLimit-Reset"] == "59"


@pytest.mark.parametrize("settings_overrides", [{"rate_limit_read": "2/second"}])
async def test_the_window_moves(client: httpx.AsyncClient) -> None:
    assert (await client.get("/posts")).status_code == 200  # t = 0
    await asyncio.sleep(0.6)
    assert (await client.get("/posts")).status_code == 200  # t = 0.6
    assert_rate_limited(await client.get("/posts"), 2, window=1)
    await asyncio.sleep(0.55)  # t = 1.15: the first request has left the window, the second not
    assert (await client.get("/posts")).status_code == 200
    response = await client.get("/posts")
    assert_rate_limited(response, 2, window=1)
    assert response.headers["Retry-After"] == "1"


# --- Redis outage -----------------------------------------------------------------------------


def rate_limit_keys(server: PrivateRedis) -> list[bytes]:
    keys: list[bytes] = server.client().keys(f"{REDIS_KEY_PREFIX}:*")
    return keys


@pytest.mark.parametrize("backend", ["embedded"])
async def test_redis_outage_falls_back_in_process_and_recovers(
    database_url: str,
    private_redis: PrivateRedis,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(redis_backend, "RETRY_AFTER_SECONDS", 0.3)
    caplog.set_level(logging.WARNING, logger="blog.redis")
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=database_url,
        redis_url=private_redis.url,
        secret_key=TEST_SECRET,
        environment="test",
        rate_limit_read="4/minute",
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app), client_from(app, "192.0.2.1") as client:
        fallbacks: list[str] = []
        app.state.redis.fallback_listeners.append(fallbacks.append)
        response = await client.get("/posts")
        assert response.status_code == 200
        assert response.headers["X-RateLimit-Remaining"] == "3"
        assert rate_limit_keys(private_redis), "counted in Redis"

        private_redis.stop()
        # In-process counting takes over with a fresh budget: never a 500.
        statuses = []
        for _ in range(5):
            response = await client.get("/posts")
            statuses.append(response.status_code)
            assert_limited_headers(response, 4)
        assert statuses == [200, 200, 200, 200, 429]
        assert "ratelimit" in fallbacks
        warnings = [r for r in caplog.records if "redis unreachable" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in caplog.records]

        await asyncio.sleep(0.4)  # a retry is due; Redis is still down: still fine, no new warning
        assert (await client.get("/posts")).status_code == 429
        warnings = [r for r in caplog.records if "redis unreachable" in r.getMessage()]
        assert len(warnings) == 1

        private_redis.start()  # same port, empty
        await asyncio.sleep(0.4)
        response = await client.get("/posts")
        assert response.status_code == 200, "back on the (empty) Redis counters"
        assert response.headers["X-RateLimit-Remaining"] == "3"
        assert rate_limit_keys(private_redis), "counted in Redis again"
        assert any("reachable again" in r.getMessage() for r in caplog.records)


# --- real worker processes --------------------------------------------------------------------


@pytest.fixture
def worker_redis_url(tmp_path: Path) -> Iterator[str]:
    """An empty Redis for the worker processes, with the scaled suite (TEST_REDIS_URL).

    A private redis-server when one is installed, so nobody else's data on the shared server is
    flushed; else a database of its own on TEST_REDIS_URL's server.
    """
    need_services("TEST_REDIS_URL")
    assert TEST_REDIS_URL is not None
    binary = shutil.which("redis-server")
    if binary is not None:
        with PrivateRedis(binary, free_port(), tmp_path / "redis") as server:
            yield server.url
        return
    base, _, db = TEST_REDIS_URL.rpartition("/")
    if not db.isdigit():
        base, db = TEST_REDIS_URL.rstrip("/"), "0"
    url = f"{base}/{(int(db) + 1) % 16}"
    redis.Redis.from_url(url).flushdb()
    try:
        yield url
    finally:
        redis.Redis.from_url(url).flushdb()


@pytest.mark.slow
@pytest.mark.postgres
def test_limits_are_shared_by_worker_processes(
    tmp_path: Path, worker_redis_url: str, private_postgres: str
) -> None:
    redis_url = worker_redis_url
    alembic_upgrade(private_postgres)
    env = {
        "DATABASE_URL": private_postgres,
        "REDIS_URL": redis_url,
        "RATE_LIMIT_ENABLED": "true",
        "RATE_LIMIT_READ": "20/minute",
        "FORWARDED_ALLOW_IPS": "127.0.0.1",
    }
    with WorkerProcesses(env, tmp_path / "uvicorn.log") as workers:
        responses = []
        for _ in range(40):
            # A fresh connection each time, so the kernel hands them to both workers.
            with httpx.Client(base_url=workers.url, timeout=10) as http:
                responses.append(http.get("/posts"))
        statuses = [response.status_code for response in responses]
        assert statuses.count(200) == 20, statuses
        assert statuses.count(429) == 20, statuses
        remaining = [int(r.headers["X-RateLimit-Remaining"]) for r in responses if r.is_success]
        assert remaining == list(range(19, -1, -1)), "one counter, shared by both workers"


# --- WebSocket handshakes ---------------------------------------------------------------------


@pytest.mark.parametrize("settings_overrides", [{"rate_limit_read": "3/minute"}])
async def test_websocket_handshakes_spend_the_read_limit(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.http_url) as http:
        assert (await http.get("/posts")).status_code == 200  # one read of three
    url = f"{live_server.ws_url}/ws/posts/1"
    with pytest.raises(websockets.InvalidStatus) as missing:  # counted, then refused: no post
        async with websockets.connect(url):
            pass
    assert missing.value.response.status_code == 404
    async with httpx.AsyncClient(base_url=live_server.http_url) as http:
        last = await http.get("/posts")
    assert last.status_code == 200
    assert last.headers["X-RateLimit-Remaining"] == "0"
    with pytest.raises(websockets.InvalidStatus) as limited:
        async with websockets.connect(url):
            pass
    response = limited.value.response
    assert response.status_code == 429
    assert response.headers["X-RateLimit-Remaining"] == "0"
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    body = json.loads(response.body)
    assert body["error_code"] == "RATE_LIMITED"


def test_client_address_and_scheme_come_from_a_trusted_proxy_only() -> None:
    from proxies import apply_trusted_proxy

    seen: list[tuple[Any, Any]] = []

    def edge(proxies: TrustedProxies, scope: dict[str, Any]) -> None:
        apply_trusted_proxy(scope, proxies)
        seen.append((scope["client"], scope["scheme"]))

    trusted = TrustedProxies(["10.0.0.1"])
    headers = [(b"x-forwarded-for", b"198.51.100.4"), (b"x-forwarded-proto", b"https")]
    for peer in ("10.0.0.1", "10.0.0.2"):
        scope = {"type": "http", "client": (peer, 5), "scheme": "http", "headers": headers}
        edge(trusted, scope)
    websocket = {"type": "websocket", "client": ("10.0.0.1", 5), "scheme": "ws", "headers": headers}
    edge(trusted, websocket)
    assert seen == [
        (("198.51.100.4", 5), "https"),
        (("10.0.0.2", 5), "http"),  # not a trusted proxy: nothing believed
        (("198.51.100.4", 5), "wss"),
    ]
    # Nobody trusted (the default): the scope is left alone.
    seen.clear()
    edge(
        TrustedProxies([]),
        {"type": "http", "client": ("127.0.0.1", 5), "scheme": "http", "headers": headers},
    )
    assert seen == [(("127.0.0.1", 5), "http")]


@pytest.mark.parametrize("settings_overrides", [{"rate_limit_read": "2/minute"}])
async def test_websocket_handshakes_with_a_query_token_spend_the_users_budget(
    live_server: LiveServer,
) -> None:
    """Pins ratelimit.websocket_token in RateLimitMiddleware.client_key: a handshake carrying
    `?token=` is charged to the token's user, as one with the header is, not to the address
    (where every user behind one proxy or NAT would share it)."""
    async with httpx.AsyncClient(base_url=live_server.http_url) as http:
        await register(http, "alice")
        headers = await login(http, "alice")
        post = await create_post(http, headers, "Watched")
    token = headers["Authorization"].removeprefix("Bearer ")
    url = f"{live_server.ws_url}/ws/posts/{post['id']}?token={token}"
    for _ in range(2):
        async with websockets.connect(url):
            pass
    with pytest.raises(websockets.InvalidStatus) as limited:
        async with websockets.connect(url):
            pass
    assert limited.value.response.status_code == 429
    async with httpx.AsyncClient(base_url=live_server.http_url) as http:
        assert (await http.get("/posts")).status_code == 200  # the address's budget is untouched
        assert_error(await http.get("/posts", headers=headers), 429, "RATE_LIMITED")
