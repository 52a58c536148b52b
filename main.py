"""The Blog API application: wiring only; behaviour lives in routes/, crud.py and friends."""

from __future__ import annotations

import functools
import gc
import logging
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute
from pydantic import ValidationError

import crud
from cache import PostReader, create_post_cache
from config import ConfigError, Settings, describe_invalid_settings, display_url, get_settings
from database import Database, describe_error
from deps import check_metrics_access, get_optional_user, reject_unsound_token
from edge import EdgeMiddleware
from effects import Effects
from errors import error_responses, register_error_handlers
from logging_setup import configure_logging
from migrations import SchemaNotReady, prepare_schema
from notifications import Notifier
from observability import record_redis_fallback
from offline_docs import install_docs
from openapi_document import BlogAPI
from ratelimit import LoginAccountThrottle, RateLimitMiddleware
from realtime import create_hub
from redis_backend import RedisBackend
from route_table import include_flat
from routes import auth, comments, health, posts, tags
from routes import metrics as metrics_routes
from routes import realtime as realtime_routes
from shutdown import run_before_server_shutdown
from socket_limits import SocketLimits

logger = logging.getLogger("blog")

GOODBYE_SECONDS = 2.0  # at a shutdown, how long WebSocket clients get to answer the 1001

DESCRIPTION = """
A blog backend: users, posts, comments and live updates.

Errors always answer `{"detail": ..., "error_code": "UPPER_SNAKE"}`. Sign in with
**Authorize** (OAuth2 password flow against `POST /auth/login`).
"""


class StartupRefused(SystemExit):
    """Start-up cannot use the database; exits non-zero without a traceback."""


class _DropStartupTraceback(logging.Filter):
    """Starlette hands the server the traceback of a failed start-up, which uvicorn logs; the
    critical line already says what is wrong, so that record is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "StartupRefused" not in record.getMessage()


def refuse_start(message: str, *args: object) -> StartupRefused:
    """Log why the service cannot start, in one line, and the exit that stops it."""
    logger.critical(message, *args)
    logging.getLogger("uvicorn.error").addFilter(_DropStartupTraceback())
    return StartupRefused(1)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    try:
        settings.jwt_secret  # noqa: B018 - create or load the shared key before serving
    except (ConfigError, OSError) as exc:
        raise refuse_start("cannot load the secret key: %s", exc) from None
    database = Database(settings)
    try:
        await database.ping()
        await prepare_schema(database, settings)
    except SchemaNotReady as exc:
        await database.dispose()
        raise refuse_start("%s", exc) from None
    except Exception as exc:
        await database.dispose()
        raise refuse_start(
            "cannot reach the database at %s: %s",
            display_url(settings.database_url),
            describe_error(exc),
        ) from None
    app.state.database = database
    app.state.redis = RedisBackend(settings.redis_url) if settings.redis_url else None
    if app.state.redis is not None:
        app.state.redis.fallback_listeners.append(record_redis_fallback)
    app.state.hub = create_hub(app.state.redis, functools.partial(crud.get_user, database))
    await app.state.hub.start()
    restore_signals = run_before_server_shutdown(app.state.hub.say_goodbye, GOODBYE_SECONDS)
    app.state.socket_limits = SocketLimits(
        app.state.redis,
        settings.ws_max_sockets_per_user,
        settings.ws_max_sockets_per_ip,
    )
    await app.state.socket_limits.start()
    app.state.notifier = Notifier(settings)
    cache = create_post_cache(
        app.state.redis, settings.cache_ttl_seconds, settings.cache_max_entries
    )
    app.state.post_reader = PostReader(cache, database)
    app.state.effects = Effects(cache, app.state.hub, app.state.notifier)
    if (
        settings.first_admin_username
        and settings.first_admin_email
        and settings.first_admin_password
    ):
        async with database.sessionmaker() as session:
            await crud.ensure_first_admin(
                session,
                settings.first_admin_username,
                settings.first_admin_email,
                settings.first_admin_password,
            )
    # What start-up built (modules, routes, schemas, mappers) lives as long as the process: out
    # of the cyclic collector's reach, full collections stop rescanning it (~5 % CPU a request).
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
        restore_signals()
        await app.state.hub.stop()
        await app.state.socket_limits.stop()
        await app.state.notifier.drain(settings.smtp_timeout_seconds)
        if app.state.redis is not None:
            await app.state.redis.close()
        await database.dispose()


def _depends_on(dependant: Dependant, call: Callable[..., Any]) -> bool:
    return any(sub.call is call or _depends_on(sub, call) for sub in dependant.dependencies)


def include_checking_tokens(app: FastAPI, router: APIRouter, **options: Any) -> None:
    """`router`'s routes, each refusing a sent but bad token (deps.get_optional_user).

    A route that already asks for the caller (OptionalUser, CurrentUser...) is not given the
    check a second time: FastAPI would solve the cached dependency again (~13 µs a request)."""
    for route in router.routes:
        checked = isinstance(route, APIRoute) and _depends_on(route.dependant, get_optional_user)
        include_flat(
            app,
            APIRouter(routes=[route]),
            dependencies=[] if checked else [Depends(get_optional_user)],
            **options,
        )


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application for the given (or the environment's) settings."""
    settings = settings or get_settings()
    app = BlogAPI(
        title="Blog API",
        version="1.0.0",
        description=DESCRIPTION,
        license_info={"name": "MIT", "identifier": "MIT"},  # LICENSE
        servers=[{"url": "/", "description": "This service"}],
        lifespan=lifespan,
        docs_url=None,  # served from local assets by install_docs below
        redoc_url=None,
        openapi_url="/openapi.json" if settings.docs_enabled else None,
        # Metrics are Prometheus (/metrics); FastAPI's native OpenTelemetry would look up the
        # global providers on every request for nothing.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        # Its redirect would be built from the client's Host; edge.strip_trailing_slash instead.
        redirect_slashes=False,
    )
    app.state.settings = settings
    app.state.login_throttle = LoginAccountThrottle(settings)
    register_error_handlers(app)
    # A bearer token that is sent but bad is refused on every endpoint, public ones included;
    # operational ones and the docs check it without the database.
    check_token_offline = [Depends(reject_unsound_token)]
    include_flat(
        app, health.router, dependencies=check_token_offline, responses=error_responses(401, 500)
    )
    include_flat(
        app,
        metrics_routes.router,
        dependencies=[Depends(check_metrics_access)],
        responses=error_responses(
            401,
            500,
            _401="With METRICS_TOKEN set: the bearer token is missing or not METRICS_TOKEN "
            "(NOT_AUTHENTICATED, INVALID_TOKEN); without it: a sent but bad token",
        ),
    )
    common = error_responses(400, 401, 422, 429, 500, 503)
    for router in (auth.router, posts.router, comments.router, tags.router):
        include_checking_tokens(app, router, responses=common)
    include_flat(app, realtime_routes.router)
    if settings.docs_enabled:
        install_docs(app, dependencies=check_token_offline)
    # Inside CORS, so 429s carry CORS headers.
    app.add_middleware(RateLimitMiddleware, settings=settings)
    if settings.cors_origins:
        wildcard = settings.cors_origins == ["*"]
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=not wildcard,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=[
                "ETag",
                "Link",
                "Location",
                "X-Total-Count",
                "X-Cache",
                "Idempotent-Replayed",
                "X-Request-ID",
                "X-Process-Time",
                "Retry-After",
                "X-RateLimit-Limit",
                "X-RateLimit-Remaining",
                "X-RateLimit-Reset",
            ],
        )
    # Outermost: its request id, timing, security headers, metrics and access line cover every
    # answer, 400 (Host), 413, 429, CORS preflights and the 500 it makes of a crash included.
    app.add_middleware(
        EdgeMiddleware,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        allowed_hosts=settings.allowed_hosts,
        body_timeout=settings.request_body_timeout_seconds,
    )
    return app


# uvicorn's and gunicorn's exit code for a worker that cannot start: their supervisors stop
# instead of starting it again and again.
STARTUP_FAILURE = 3


def _app_from_environment() -> FastAPI:
    try:
        settings = get_settings()
    except (ValidationError, ConfigError) as exc:
        # At import time, before logging is set up: one line, no traceback.
        problem = describe_invalid_settings(exc) if isinstance(exc, ValidationError) else exc
        print(f"error: invalid configuration: {problem}", file=sys.stderr)
        raise SystemExit(STARTUP_FAILURE) from None
    configure_logging(settings.log_level, settings.log_format, settings.instance_id)
    return create_app(settings)


app = _app_from_environment()


if __name__ == "__main__":  # `python main.py`: what `make run` serves, without the migrate step
    import os

    import uvicorn

    host, port = os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8000"))
    uvicorn.run(app, host=host, port=port, ws_max_size=65536, access_log=False, log_config=None)
