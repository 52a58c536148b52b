"""One flat route table: the routers' routes added to the app itself, not nested under it.

FastAPI (0.16x) keeps an included router as a node of the app's routes and resolves it on
every request: each router's routes are matched through its node, and the route version of
every router is summed again for each lookup. A `GET /posts/{id}` walked four routers (health,
metrics, auth, users) before reaching its own. Added here one by one with `add_api_route`,
each route carries what the include would have given it (dependencies first, then the route's
own; responses merged, the route's winning), so the OpenAPI document is the same, byte for byte.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, FastAPI, params
from fastapi.datastructures import DefaultPlaceholder
from fastapi.routing import APIRoute, APIWebSocketRoute


def _chosen(*values: Any) -> Any:
    """The first value that is not a FastAPI default placeholder (else the last default)."""
    for value in values:
        if not isinstance(value, DefaultPlaceholder):
            return value
    return values[-1]


def include_flat(
    app: FastAPI,
    router: APIRouter,
    *,
    dependencies: Sequence[params.Depends] = (),
    responses: dict[int | str, dict[str, Any]] | None = None,
) -> None:
    """Add `router`'s routes to `app` in order, as `app.include_router(router, ...)` would
    expose them (without a prefix of its own: routers here carry theirs in their paths)."""
    for route in router.routes:
        if isinstance(route, APIRoute):
            app.router.add_api_route(
                route.path,
                route.endpoint,
                response_model=route.response_model,
                status_code=route.status_code,
                tags=list(route.tags),
                dependencies=[*dependencies, *route.dependencies],
                summary=route.summary,
                description=route.description,
                response_description=route.response_description,
                responses={**(responses or {}), **route.responses},
                deprecated=route.deprecated,
                methods=route.methods,
                operation_id=route.operation_id,
                response_model_include=route.response_model_include,
                response_model_exclude=route.response_model_exclude,
                response_model_by_alias=route.response_model_by_alias,
                response_model_exclude_unset=route.response_model_exclude_unset,
                response_model_exclude_defaults=route.response_model_exclude_defaults,
                response_model_exclude_none=route.response_model_exclude_none,
                include_in_schema=route.include_in_schema,
                response_class=_chosen(route.response_class, router.default_response_class),
                name=route.name,
                route_class_override=type(route),
                callbacks=route.callbacks,
                openapi_extra=route.openapi_extra,
                generate_unique_id_function=_chosen(
                    route.generate_unique_id_function, router.generate_unique_id_function
                ),
                strict_content_type=_chosen(route.strict_content_type, router.strict_content_type),
            )
        elif isinstance(route, APIWebSocketRoute):
            app.router.add_api_websocket_route(
                route.path,
                route.endpoint,
                name=route.name,
                dependencies=[*dependencies, *route.dependencies],
            )
        else:
            raise TypeError(f"include_flat takes API routes only, not {route!r}")
