"""Per-client rate limits: a pure ASGI middleware over the `limits` library's async API.

Each request that is limited falls in one category (`login`, `write` or `read`), each with its
own configurable limit, counted per client: the user id when the request carries a valid bearer
token, else the client IP (decided once, by the edge with `proxies.apply_trusted_proxy`, which
believes `X-Forwarded-For` only from a trusted proxy). The strategy is a moving window, so
`X-RateLimit-Reset` and `Retry-After` say when the oldest request in the window leaves it, i.e.
when a slot frees.

Counters live in Redis when `REDIS_URL` is set (shared by every worker, through the shared
connection pool of `RedisBackend`) and in process memory otherwise (the `limits` library's moving
window). In Redis the window is a sorted set of request times, read and updated by one script
(MOVING_WINDOW), on Redis's own clock so workers on different hosts agree; the `limits` Redis
storage would take two round trips per request (the hit, then the window's stats). A busy
client's slots are taken a few at a time and handed out by the worker (rate_leases.py), and the
asks that reach the limiter in the same turn of the event loop go out together
(`RedisBackend.pipelined`): one write and one read for the lot, each script still atomic, so the
limit stays exact (no worker admits past it) at a fraction of a round trip per request.
While Redis is unreachable the in-process limiter takes over; `RedisBackend` logs the outage once
and decides when Redis is tried again, so a Redis outage never fails a request.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from starlette.datastructures import QueryParams
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from config import Settings
from edge import RESPONSE_HEADERS
from errors import (
    InvalidCredentials,
    NotAuthenticated,
    RateLimited,
    deny_websocket,
    error_response,
)
from observability import record_rate_limited
from rate_leases import Grant, SlotLeases, hold_seconds, lease_ceiling
from redis_backend import RedisBackend
from security import decode_access_token

logger = logging.getLogger("blog.ratelimit")

Category = Literal["login", "write", "read"]

COMPONENT = "ratelimit"
VERIFIED_TOKEN = "verified_token"  # scope state: (bearer token, its user id)
REDIS_KEY_PREFIX = "blog:ratelimit"
LOGIN_PATHS = frozenset({"/auth/login", "/auth/register"})
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
EXEMPT_PATHS = frozenset({"/", "/metrics", "/redoc", "/openapi.json", "/health"})
EXEMPT_PREFIXES = ("/health/", "/docs", "/static/")

# The window of every shared limit: take up to ARGV[3] slots of it at once (rate_leases.py; one
# slot, `one_slot`, for the limits that are not leased). KEYS[1]: the window; ARGV: limit, window
# seconds, slots wanted, seconds the slots after the first are kept (they are recorded that much
# later), a member prefix unique to this ask. Returns {slots granted (0: refused), free slots
# left, seconds until the oldest slot leaves the window}.
MOVING_WINDOW = """
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local wanted = tonumber(ARGV[3])
local hold = tonumber(ARGV[4])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
local granted = math.max(0, math.min(wanted, limit - count))
for slot = 1, granted do
  local at = now
  if slot > 1 then at = now + hold end
  redis.call('ZADD', KEYS[1], at, ARGV[5] .. ':' .. slot)
end
count = count + granted
redis.call('EXPIRE', KEYS[1], math.ceil(window + hold))
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local reset = 0
if oldest[2] then
  reset = tonumber(oldest[2]) + window - now
end
return {granted, limit - count, tostring(reset)}
"""


# KEYS[1]: the window; ARGV: window seconds. Returns {requests in the window, seconds until the
# oldest leaves it}; counts nothing.
WINDOW_STATE = """
local window = tonumber(ARGV[1])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local reset = 0
if oldest[2] then
  reset = tonumber(oldest[2]) + window - now
end
return {count, tostring(reset)}
"""


def one_slot(limit: int, window_seconds: int, member: str) -> list[int | str]:
    """MOVING_WINDOW's arguments for a single slot, recorded now: a plain moving window."""
    return [limit, window_seconds, 1, 0, member]


@dataclass(frozen=True)
class Decision:
    """The outcome of one hit: allowed or not, and what the headers should say."""

    allowed: bool
    limit: int
    remaining: int
    reset_in: int  # whole seconds until the window frees a slot

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_in),
        }

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        return [(name.lower().encode(), value.encode()) for name, value in self.headers().items()]


def request_path(scope: Scope) -> str:
    """The path within the application (without a root path), without a trailing slash."""
    path: str = scope.get("path", "/")
    root_path: str = scope.get("root_path", "")
    if root_path and path.startswith(root_path):
        path = path[len(root_path) :]
    return path.rstrip("/") or "/"


def request_category(scope: Scope) -> Category | None:
    """Which limit applies to this HTTP request; None when it is never limited."""
    method: str = scope["method"]
    path = request_path(scope)
    if path in EXEMPT_PATHS or path.startswith(EXEMPT_PREFIXES):
        return None
    if method == "OPTIONS" and header(scope, b"access-control-request-method") is not None:
        return None  # a CORS preflight
    if method == "POST" and path in LOGIN_PATHS:
        return "login"
    if method in WRITE_METHODS:
        return "write"
    return "read"


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of a request header (name in lower case), or None."""
    for key, value in scope.get("headers", ()):
        if key == name:
            text: str = value.decode("latin-1")
            return text
    return None


def bearer_token(scope: Scope) -> str | None:
    authorization = header(scope, b"authorization")
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def websocket_token(scope: Scope) -> str | None:
    """A WebSocket handshake's token: `?token=` (what browsers can send), else the header."""
    token = QueryParams(scope.get("query_string", b"")).get("token")
    return token if token is not None else bearer_token(scope)


def peer_ip(scope: Scope) -> str:
    """The client's address, as the edge decided it (proxies.apply_trusted_proxy)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def decision(item: RateLimitItem, allowed: bool, remaining: int, reset_in: float) -> Decision:
    remaining = max(0, min(item.amount, remaining))
    empty = remaining >= item.amount  # nothing to wait for
    seconds = 0 if empty else max(1, min(item.get_expiry(), math.ceil(reset_in)))
    return Decision(allowed, item.amount, remaining if allowed else 0, seconds)


async def consume_in_process(
    limiter: MovingWindowRateLimiter, item: RateLimitItem, category: str, key: str
) -> Decision:
    """Take one slot for `key` (if one is free) and read the window back."""
    allowed = await limiter.hit(item, category, key)
    stats = await limiter.get_window_stats(item, category, key)
    # reset_time is when the oldest request in the window leaves it (frees a slot).
    return decision(item, allowed, stats.remaining, stats.reset_time - time.time())


class RateLimitMiddleware:
    """Counts limited requests per client and category; 429 `RATE_LIMITED` over the limit."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.enabled = settings.rate_limit_enabled
        self.items: dict[Category, RateLimitItem] = {
            "read": parse(settings.rate_limit_read),
            "write": parse(settings.rate_limit_write),
            "login": parse(settings.rate_limit_login),
        }
        # Without Redis, and during a Redis outage: counters in this process only.
        self.memory_limiter = MovingWindowRateLimiter(MemoryStorage())
        self._redis_backend: RedisBackend | None = None
        self._take_slots: AsyncScript | None = None
        self.leases = SlotLeases()
        # Members of the sorted sets: unique across processes without asking the OS each time.
        self._members = (f"{os.getpid()}-{os.urandom(4).hex()}-{n}" for n in itertools.count())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.enabled or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await self.websocket_handshake(scope, receive, send)
            return
        category = request_category(scope)
        if category is None:
            await self.app(scope, receive, send)
            return
        decision = await self.check(scope, category)
        headers = decision.headers()
        if not decision.allowed:
            retry_after = max(1, decision.reset_in)
            headers["Retry-After"] = str(retry_after)
            record_rate_limited(category)
            logger.debug("rate limited: %s %s", category, scope.get("path"))
            detail = (
                f"Rate limit exceeded ({self.items[category]}); retry after {retry_after} seconds"
            )
            await error_response(429, detail, "RATE_LIMITED", headers)(scope, receive, send)
            return

        # edge.EdgeMiddleware puts them on the response, in place of any the route set.
        scope.setdefault("state", {})[RESPONSE_HEADERS] = decision.raw_headers()
        await self.app(scope, receive, send)

    async def websocket_handshake(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket handshake counts as a read, charged to the user of its token (`?token=`
        or the header), else its IP: a 429 at the handshake over the limit (a close before
        accepting, i.e. HTTP 403, where the server cannot send a response)."""
        decision = await self.check(scope, "read")
        if decision.allowed:
            await self.app(scope, receive, send)
            return
        record_rate_limited("read")
        retry_after = max(1, decision.reset_in)
        headers = {**decision.headers(), "Retry-After": str(retry_after)}
        detail = f"Rate limit exceeded ({self.items['read']}); retry after {retry_after} seconds"
        await deny_websocket(
            WebSocket(scope, receive, send), error_response(429, detail, "RATE_LIMITED", headers)
        )

    def client_key(self, scope: Scope) -> str:
        """`user:<id>` for a valid bearer token, else `ip:<address>`; never touches the DB."""
        token = websocket_token(scope) if scope["type"] == "websocket" else bearer_token(scope)
        if token is not None:
            try:
                user_id = decode_access_token(token, self.settings.jwt_secret)
            except NotAuthenticated:
                pass  # the route answers 401; count the attempt against the IP
            else:
                # deps.get_optional_user takes it from here instead of decoding again.
                scope.setdefault("state", {})[VERIFIED_TOKEN] = (token, user_id)
                return f"user:{user_id}"
        return f"ip:{peer_ip(scope)}"

    async def check(self, scope: Scope, category: Category) -> Decision:
        item = self.items[category]
        # Login and register are counted by IP even with a valid token: else every account
        # an attacker holds would bring a fresh budget of password guesses and sign-ups.
        key = f"ip:{peer_ip(scope)}" if category == "login" else self.client_key(scope)
        backend = self.redis_backend(scope)
        if backend is None:
            return await consume_in_process(self.memory_limiter, item, category, key)
        script = self.take_slots_script(backend)
        window_key = f"{REDIS_KEY_PREFIX}:{category}:{key}"
        window = item.get_expiry()
        hold = hold_seconds(window)

        async def take_slots(wanted: int) -> Grant:
            args: list[int | float | str] = [item.amount, window, wanted, hold, next(self._members)]
            granted, remaining, reset_in = await backend.run_script(
                script, [window_key], args, pipelined=True
            )
            return Grant(int(granted), int(remaining), float(reset_in))

        async def shared(_client: Redis) -> Decision:
            ceiling = lease_ceiling(item.amount)
            admission = await self.leases.take(window_key, ceiling, hold, take_slots)
            return decision(item, admission.allowed, admission.remaining, admission.reset_in)

        async def local() -> Decision:
            return await consume_in_process(self.memory_limiter, item, category, key)

        # Redis errors are caught there: mark_failed (warns once per outage), then `local`.
        return await backend.call(COMPONENT, shared, local)

    @staticmethod
    def redis_backend(scope: Scope) -> RedisBackend | None:
        """The application's shared Redis (created by the lifespan), looked up per request."""
        state = getattr(scope.get("app"), "state", None)
        backend = getattr(state, "redis", None)
        return backend if isinstance(backend, RedisBackend) else None

    def take_slots_script(self, backend: RedisBackend) -> AsyncScript:
        """The window script on the backend's client; registered again if it is replaced."""
        if self._take_slots is None or self._redis_backend is not backend:
            self._take_slots = backend.client.register_script(MOVING_WINDOW)
            self._redis_backend = backend
        return self._take_slots


class LoginAccountThrottle:
    """Failed logins per username (RATE_LIMIT_LOGIN_ACCOUNT), from any address: the per-IP
    login limit alone gives every new address ten more guesses at the same account.

    The username is normalised as login matches it (case-insensitively) and counted whether or
    not the account exists, so the throttle reveals nothing; the key is its hash (a form field
    has no length limit). Past the limit every login for that username, right password or not,
    answers 429 `RATE_LIMITED` until the window frees a slot. In Redis when configured (shared
    by every worker), in process memory otherwise and during an outage."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.rate_limit_enabled
        self.item = parse(settings.rate_limit_login_account)
        self.memory_limiter = MovingWindowRateLimiter(MemoryStorage())
        self._scripts: tuple[RedisBackend, AsyncScript, AsyncScript] | None = None
        self._members = (f"{os.getpid()}-{os.urandom(4).hex()}-{n}" for n in itertools.count())

    @staticmethod
    def account_key(username: str) -> str:
        return hashlib.sha256(username.lower().encode("utf-8", "replace")).hexdigest()[:32]

    @asynccontextmanager
    async def attempt(self, scope: Scope, username: str) -> AsyncIterator[None]:
        """Around one login: refuses it when the username is over the limit, and counts it
        when it fails with InvalidCredentials."""
        if not self.enabled:
            yield
            return
        key = self.account_key(username)
        backend = RateLimitMiddleware.redis_backend(scope)
        count, reset_in = await self._state(backend, key)
        if count >= self.item.amount:
            record_rate_limited("login_account")
            retry_after = max(1, math.ceil(reset_in))
            raise RateLimited(
                f"Too many failed logins for this username ({self.item}); "
                f"retry after {retry_after} seconds",
                retry_after,
            )
        try:
            yield
        except InvalidCredentials:
            await self._count_failure(backend, key)
            raise

    async def _state(self, backend: RedisBackend | None, key: str) -> tuple[int, float]:
        async def local() -> tuple[int, float]:
            stats = await self.memory_limiter.get_window_stats(self.item, "login_account", key)
            return self.item.amount - stats.remaining, stats.reset_time - time.time()

        if backend is None:
            return await local()
        _, state_script, _ = self.scripts(backend)

        async def shared(_client: Redis) -> tuple[int, float]:
            window = f"{REDIS_KEY_PREFIX}:login_account:{key}"
            count, reset_in = await backend.run_script(
                state_script, [window], [self.item.get_expiry()]
            )
            return int(count), float(reset_in)

        return await backend.call(COMPONENT, shared, local)

    async def _count_failure(self, backend: RedisBackend | None, key: str) -> None:
        async def local() -> None:
            await self.memory_limiter.hit(self.item, "login_account", key)

        if backend is None:
            await local()
            return
        _, _, hit_script = self.scripts(backend)

        async def shared(_client: Redis) -> None:
            window = f"{REDIS_KEY_PREFIX}:login_account:{key}"
            args = one_slot(self.item.amount, self.item.get_expiry(), next(self._members))
            await backend.run_script(hit_script, [window], args)

        await backend.call(COMPONENT, shared, local)

    def scripts(self, backend: RedisBackend) -> tuple[RedisBackend, AsyncScript, AsyncScript]:
        if self._scripts is None or self._scripts[0] is not backend:
            client = backend.client
            state = client.register_script(WINDOW_STATE)
            self._scripts = (backend, state, client.register_script(MOVING_WINDOW))
        return self._scripts
