"""The OpenAPI document, refined where FastAPI's own cannot say enough for generated clients:
which operations need a token, and the headers every answer carries."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts

from deps import get_current_user
from ratelimit import request_category

SIGN_IN: dict[str, Any] = {"security": []}  # openapi_extra of operations that take no token at all


def header(description: str, *, required: bool = False, **schema: Any) -> dict[str, Any]:
    """An OpenAPI response header; its schema is a string unless `type` says otherwise."""
    return {
        "description": description,
        "required": required,
        "schema": {"type": "string", **schema},
    }


ETAG = header('Strong validator of the post, such as `"12-3"`.', required=True)
X_CACHE = header("Whether the post cache answered.", required=True, enum=["HIT", "MISS"])
LINK = header('`<...cursor=...>; rel="next"` when there is a next page (always a cursor).')
X_TOTAL_COUNT = header("Posts matching the filters (with `count=true`).", type="integer")
LOCATION = header("The new post: `/posts/{id}`.", required=True)
IDEMPOTENT_REPLAYED = header("`true` when this is the stored answer to an earlier request.")
RETRY_AFTER = header("Whole seconds to wait before retrying.", required=True, type="integer")
RATE_LIMIT_HEADERS = {
    "X-RateLimit-Limit": header("Requests allowed per window.", type="integer"),
    "X-RateLimit-Remaining": header("Requests left in the window.", type="integer"),
    "X-RateLimit-Reset": header("Seconds until the window frees a slot.", type="integer"),
}
EVERY_ANSWER = {
    "X-Request-ID": header(
        "The client's own when sane (1-128 of A-Z a-z 0-9 . _ -), else new.", required=True
    ),
    "X-Process-Time": header("Seconds the service spent on the request.", required=True),
}
ERROR_HEADERS: dict[int, dict[str, Any]] = {
    429: {"Retry-After": RETRY_AFTER, **RATE_LIMIT_HEADERS},
    503: {"Retry-After": RETRY_AFTER},
}


def _needs_user(dependant: Dependant) -> bool:
    return any(sub.call is get_current_user or _needs_user(sub) for sub in dependant.dependencies)


def _refine_operation(route: APIRoute, path: str, method: str, operation: dict[str, Any]) -> None:
    extra = route.openapi_extra or {}
    if "security" in extra:
        # FastAPI appends openapi_extra's list to the requirements it found instead of replacing.
        operation["security"] = extra["security"]
    elif operation.get("security") and not _needs_user(route.dependant):
        operation["security"] = [{}, *operation["security"]]  # the token is optional
    limited = request_category({"type": "http", "method": method, "path": path, "headers": []})
    for response in operation["responses"].values():
        headers = response.setdefault("headers", {})
        headers.update(EVERY_ANSWER)
        if limited:
            for name, spec in RATE_LIMIT_HEADERS.items():
                headers.setdefault(name, spec)


class BlogAPI(FastAPI):
    """FastAPI whose /openapi.json is refined once, when it is first built."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            document = super().openapi()
            for context in iter_route_contexts(self.routes):
                route = context.original_route  # its own dependencies, not its router's
                path = context.path_format
                if isinstance(route, APIRoute) and route.include_in_schema and path:
                    for method in context.methods or ():
                        operation = document["paths"][path][method.lower()]
                        _refine_operation(route, path, method, operation)
        return super().openapi()
