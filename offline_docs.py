"""`/docs` (Swagger UI) and `/redoc` served with assets vendored in static/docs: no CDN needed.

Each docs page carries its own Content-Security-Policy, which the edge (edge.py) keeps:
the page's inline script is allowed by its SHA-256 hash, everything else must come from this
service (see security_headers.docs_content_security_policy).

The pages link the assets with a hash of their content (`swagger-ui-bundle.js?v=<hash>`), so an
asset URL never changes meaning and is served `immutable` for a year, with an ETag (304 on
If-None-Match); a new vendored version makes new URLs.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.params import Depends
from starlette.datastructures import Headers
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route
from starlette.staticfiles import NotModifiedResponse, StaticFiles
from starlette.types import Scope

from security_headers import docs_content_security_policy

DOCS_ASSETS_DIR = Path(__file__).resolve().parent / "static" / "docs"
ASSETS_PATH = "/static/docs"
SWAGGER_PATH = "/docs"
OAUTH2_REDIRECT_PATH = "/docs/oauth2-redirect"
REDOC_PATH = "/redoc"

SWAGGER_JS = "swagger-ui-bundle.js"
SWAGGER_CSS = "swagger-ui.css"
FAVICON = "favicon-32x32.png"
REDOC_JS = "redoc.standalone.js"

_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)
ASSET_CACHE_CONTROL = "public, max-age=31536000, immutable"


class VersionedAssets(StaticFiles):
    """StaticFiles whose answers may be kept for a year: the pages link them by content hash."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = FileResponse(full_path, status_code=status_code, stat_result=stat_result)
        response.headers["Cache-Control"] = ASSET_CACHE_CONTROL
        if self.is_not_modified(response.headers, Headers(scope=scope)):
            return NotModifiedResponse(response.headers)
        return response


def asset_version(name: str) -> str:
    """A short hash of the asset's content, for its URL."""
    return hashlib.sha256((DOCS_ASSETS_DIR / name).read_bytes()).hexdigest()[:16]


def inline_script_hashes(html: str) -> list[str]:
    """CSP source expressions ('sha256-...') for every inline <script> of the page."""
    return [
        "'sha256-{}'".format(
            base64.b64encode(hashlib.sha256(body.encode("utf-8")).digest()).decode("ascii")
        )
        for body in _INLINE_SCRIPT.findall(html)
    ]


def with_policy(page: HTMLResponse) -> HTMLResponse:
    """The page with a CSP that admits exactly its own inline scripts and local assets."""
    html = bytes(page.body).decode("utf-8")
    page.headers["Content-Security-Policy"] = docs_content_security_policy(
        inline_script_hashes(html)
    )
    return page


def install_docs(app: FastAPI, dependencies: Sequence[Depends] = ()) -> None:
    """Serve Swagger UI at /docs and ReDoc at /redoc from local assets; needs app.openapi_url.

    `dependencies` run before each docs page and the schema (FastAPI's own schema route is
    registered again as an APIRoute so that they can)."""
    openapi_url = app.openapi_url
    if openapi_url is None:
        raise RuntimeError("install_docs needs the OpenAPI schema (openapi_url) to be enabled")
    routes = app.router.routes
    (schema_route,) = [r for r in routes if isinstance(r, Route) and r.path == openapi_url]
    routes.remove(schema_route)
    app.add_api_route(
        openapi_url,
        schema_route.endpoint,
        methods=["GET", "HEAD"],
        include_in_schema=False,
        dependencies=dependencies,
    )
    if not (DOCS_ASSETS_DIR / SWAGGER_JS).is_file() or not (DOCS_ASSETS_DIR / REDOC_JS).is_file():
        raise RuntimeError(f"docs assets missing in {DOCS_ASSETS_DIR}; run `make docs-assets`")
    app.mount(ASSETS_PATH, VersionedAssets(directory=DOCS_ASSETS_DIR), name="docs-assets")
    url = {
        name: f"{ASSETS_PATH}/{name}?v={asset_version(name)}"
        for name in (SWAGGER_JS, SWAGGER_CSS, FAVICON, REDOC_JS)
    }

    def prefix(request: Request) -> str:
        root_path: str = request.scope.get("root_path", "")
        return root_path.rstrip("/")

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = prefix(request)
        return with_policy(
            get_swagger_ui_html(
                openapi_url=root + openapi_url,
                title=f"{app.title} - Swagger UI",
                swagger_js_url=root + url[SWAGGER_JS],
                swagger_css_url=root + url[SWAGGER_CSS],
                swagger_favicon_url=root + url[FAVICON],
                oauth2_redirect_url=root + OAUTH2_REDIRECT_PATH,
                init_oauth=app.swagger_ui_init_oauth,
                swagger_ui_parameters=app.swagger_ui_parameters,
            )
        )

    async def swagger_ui_redirect() -> HTMLResponse:
        return with_policy(get_swagger_ui_oauth2_redirect_html())

    async def redoc(request: Request) -> HTMLResponse:
        root = prefix(request)
        return with_policy(
            get_redoc_html(
                openapi_url=root + openapi_url,
                title=f"{app.title} - ReDoc",
                redoc_js_url=root + url[REDOC_JS],
                redoc_favicon_url=root + url[FAVICON],
                with_google_fonts=False,
            )
        )

    for path, page in (
        (SWAGGER_PATH, swagger_ui),
        (OAUTH2_REDIRECT_PATH, swagger_ui_redirect),
        (REDOC_PATH, redoc),
    ):
        app.add_api_route(
            path, page, methods=["GET"], include_in_schema=False, dependencies=dependencies
        )
