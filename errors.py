"""Domain errors and their one translation into the HTTP error envelope."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError, WebSocketRequestValidationError
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, Response
from starlette.routing import Match
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from uvicorn.protocols.utils import ClientDisconnected

logger = logging.getLogger("blog.errors")


class AppError(Exception):
    """A failure the client caused or may see; carries its HTTP status and error code."""

    status_code = 400
    error_code = "BAD_REQUEST"
    detail = "Bad request"

    def __init__(self, detail: str | None = None, *, headers: dict[str, str] | None = None):
        if detail is not None:
            self.detail = detail
        self.headers = headers
        super().__init__(self.detail)


class NotAuthenticated(AppError):
    status_code = 401
    error_code = "NOT_AUTHENTICATED"
    detail = "Not authenticated"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class TokenExpired(NotAuthenticated):
    error_code = "TOKEN_EXPIRED"
    detail = "Token has expired"


class InvalidToken(NotAuthenticated):
    error_code = "INVALID_TOKEN"
    detail = "Invalid token"


class InvalidCredentials(NotAuthenticated):
    error_code = "INVALID_CREDENTIALS"
    detail = "Incorrect username or password"


class InsufficientPermissions(AppError):
    status_code = 403
    error_code = "INSUFFICIENT_PERMISSIONS"
    detail = "You do not have permission to do this"


class PostNotFound(AppError):
    status_code = 404
    error_code = "POST_NOT_FOUND"
    detail = "Post not found"


class CommentNotFound(AppError):
    status_code = 404
    error_code = "COMMENT_NOT_FOUND"
    detail = "Comment not found"


class UserNotFound(AppError):
    status_code = 404
    error_code = "USER_NOT_FOUND"
    detail = "User not found"


class UsernameTaken(AppError):
    status_code = 409
    error_code = "USERNAME_TAKEN"
    detail = "Username is already taken"


class EmailTaken(AppError):
    status_code = 409
    error_code = "EMAIL_TAKEN"
    detail = "Email is already registered"


class PostTitleExists(AppError):
    status_code = 409
    error_code = "POST_TITLE_EXISTS"
    detail = "A post with this title already exists"


class RateLimited(AppError):
    status_code = 429
    error_code = "RATE_LIMITED"
    detail = "Rate limit exceeded"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


class SlugTaken(AppError):
    status_code = 409
    error_code = "SLUG_TAKEN"
    detail = "Another post has this slug"


class PreconditionFailed(AppError):
    status_code = 412
    error_code = "PRECONDITION_FAILED"
    detail = "The post has changed since the given ETag"


class TooManySockets(RateLimited):
    detail = "Too many open live-update sockets"


class InvalidCursor(AppError):
    status_code = 422
    error_code = "INVALID_CURSOR"
    detail = "Invalid cursor"


class DatabaseUnavailable(AppError):
    status_code = 503
    error_code = "SERVICE_UNAVAILABLE"
    detail = "The database is unavailable; retry shortly"

    def __init__(self) -> None:
        super().__init__(headers={"Retry-After": "1"})


class InvalidQuery(AppError):
    """A query-parameter combination the contract refuses (reported like validation errors)."""

    status_code = 422
    error_code = "VALIDATION_ERROR"

    def __init__(self, loc: list[str], msg: str) -> None:
        super().__init__(msg)
        self.errors = [{"loc": loc, "msg": msg, "type": "value_error"}]


HTTP_ERROR_CODES = {
    400: "BAD_REQUEST",
    401: "NOT_AUTHENTICATED",
    403: "INSUFFICIENT_PERMISSIONS",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    408: "REQUEST_TIMEOUT",
    409: "CONFLICT",
    412: "PRECONDITION_FAILED",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "VALIDATION_ERROR",
    429: "RATE_LIMITED",
    500: "INTERNAL_ERROR",
    503: "SERVICE_UNAVAILABLE",
}


def error_response(
    status_code: int,
    detail: Any,
    error_code: str,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = {"detail": detail, "error_code": error_code}
    return JSONResponse(jsonable_encoder(body), status_code=status_code, headers=headers)


# Set once a handshake was refused with an HTTP answer: uvicorn's websockets-sansio protocol
# then still logs "ASGI callable returned without completing handshake." at ERROR (it never marks
# a denial response as the end of the handshake); logging_setup drops that one line for it.
websocket_denied: ContextVar[bool] = ContextVar("websocket_denied", default=False)


async def deny_websocket(websocket: WebSocket, response: Response) -> None:
    """Refuse a WebSocket handshake with an HTTP answer (the ASGI WebSocket denial response)
    where the server offers it, else with a close before accepting (HTTP 403). A client that
    left first is no error: nothing is left to answer, and nothing is logged."""
    with contextlib.suppress(OSError, WebSocketDisconnect):  # uvicorn: ClientDisconnected
        if websocket.application_state != WebSocketState.CONNECTING:
            await websocket.close(code=1011)  # accepted already: too late for an HTTP answer
        elif "websocket.http.response" in websocket.scope.get("extensions", {}):
            websocket_denied.set(True)
            await websocket.send_denial_response(response)
        else:
            await websocket.close(code=1008)


class WebSocketDenial(Response):
    """An error response sent as a WebSocket handshake's denial (see deny_websocket)."""

    def __init__(self, response: Response) -> None:
        super().__init__(status_code=response.status_code)
        self.response = response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await deny_websocket(WebSocket(scope, receive, send), self.response)


def _answer(connection: HTTPConnection, response: Response) -> Response:
    """The error response, or for a WebSocket the same answer as its handshake's denial."""
    return WebSocketDenial(response) if connection.scope["type"] == "websocket" else response


async def _app_error(connection: HTTPConnection, exc: Exception) -> Response:
    assert isinstance(exc, AppError)
    detail: Any = exc.errors if isinstance(exc, InvalidQuery) else exc.detail
    return _answer(connection, error_response(exc.status_code, detail, exc.error_code, exc.headers))


HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> str:
    """Every method the path answers to: Starlette names only the first route that matched."""
    routes = request.app.router.routes
    return ", ".join(
        method
        for method in HTTP_METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes
        )
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = HTTP_ERROR_CODES.get(exc.status_code, "HTTP_ERROR")
    detail = exc.detail
    if exc.status_code == 405:
        exc.headers = {**(exc.headers or {}), "Allow": _allowed_methods(request)}
    if exc.status_code == 404 and detail == "Not Found":
        detail = "Not found"
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    return error_response(exc.status_code, detail, code, exc.headers)


NOT_JSON = "The body must be a JSON object, sent with Content-Type: application/json"


def _sent_json(connection: HTTPConnection) -> bool:
    """Whether the body was declared JSON (`application/json` or `application/*+json`), the
    only bodies FastAPI parses as JSON; any other is handed to validation as raw bytes."""
    media_type = connection.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


async def _validation_error(connection: HTTPConnection, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError | WebSocketRequestValidationError)
    errors = []
    for err in exc.errors():
        loc, msg, type_ = list(err.get("loc", ())), err.get("msg", ""), err.get("type", "")
        if loc == ["body"] and type_ == "model_attributes_type" and not _sent_json(connection):
            msg = NOT_JSON  # pydantic's words would be about the bytes it was given instead
        errors.append({"loc": loc, "msg": msg, "type": type_})
    return _answer(connection, error_response(422, errors, "VALIDATION_ERROR"))


def lost_database(exc: BaseException) -> bool:
    """Whether an error means the database cannot be reached (down, restarting, connection
    lost), as opposed to a bug or a rejected statement."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    lost = (
        OSError,
        asyncpg.PostgresConnectionError,  # SQLSTATE class 08
        asyncpg.exceptions.OperatorInterventionError,  # class 57: shutting down, starting up
        asyncpg.exceptions.ConnectionDoesNotExistError,
    )
    seen: BaseException | None = exc
    for _ in range(5):  # the driver error sits under SQLAlchemy's wrappers
        if seen is None:
            break
        if isinstance(seen, lost) or (
            isinstance(seen, asyncpg.InterfaceError) and "connection is closed" in str(seen)
        ):
            return True
        seen = getattr(seen, "orig", None) or seen.__cause__
    return False


async def _database_error(connection: HTTPConnection, exc: Exception) -> Response:
    if isinstance(exc, ClientDisconnected):  # an OSError to uvicorn: the client left
        return _answer(connection, Response(status_code=499))  # to no one; nothing went wrong
    if not lost_database(exc):
        raise exc  # a bug: the last-resort handler answers 500 and logs it
    method = connection.scope.get("method", "WebSocket")
    logger.warning("database unavailable on %s %s: %s", method, connection.url.path, exc)
    return await _app_error(connection, DatabaseUnavailable())


def register_error_handlers(app: FastAPI) -> None:
    """Translate every error into the envelope, in this one place."""
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(OSError, _database_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(WebSocketRequestValidationError, _validation_error)


ERROR_DESCRIPTIONS = {
    400: "BAD_REQUEST: the body could not be read (e.g. it is not UTF-8)",
    401: "No token (NOT_AUTHENTICATED), or a bad one (INVALID_TOKEN, TOKEN_EXPIRED); "
    "a sent but bad token is refused on every endpoint",
    403: "INSUFFICIENT_PERMISSIONS",
    404: "Not found, or not visible to the caller",
    409: "Conflict",
    412: "PRECONDITION_FAILED: If-Match does not match the current ETag",
    408: "REQUEST_TIMEOUT: the body did not arrive within REQUEST_BODY_TIMEOUT_SECONDS",
    413: "PAYLOAD_TOO_LARGE: the body is over 1 MiB",
    422: "VALIDATION_ERROR (detail is a list of {loc, msg, type}), or another 422 code",
    429: "RATE_LIMITED: see Retry-After and the X-RateLimit-* headers",
    500: "INTERNAL_ERROR: a bug; `request_id` names the log line",
    503: "SERVICE_UNAVAILABLE: the database cannot be reached; retry after Retry-After seconds",
}


def error_responses(*codes: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for error answers, all in the envelope; `descriptions` by `_409=...`."""
    from openapi_document import ERROR_HEADERS
    from schemas import ErrorResponse

    responses: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        description = descriptions.get(f"_{code}", ERROR_DESCRIPTIONS[code])
        responses[code] = {"model": ErrorResponse, "description": description}
        if code in ERROR_HEADERS:
            responses[code]["headers"] = ERROR_HEADERS[code]
    return responses
