"""/docs and /redoc work offline: every asset is served by the service itself.

The HTTP tests check what the pages reference; the browser test loads them in headless Chromium
with every request to another host blocked and uses Swagger UI's "Authorize" and "Try it out".
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from conftest import PASSWORD, ROOT, TEST_SECRET
from worker_processes import SERVER_FLAGS

DOCS_PAGES = ["/docs", "/redoc", "/docs/oauth2-redirect"]
ASSET_TYPES = {
    ".js": ("text/javascript", "application/javascript"),
    ".css": ("text/css",),
    ".png": ("image/png",),
}
ASSET_REFERENCE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")
SPEC_REFERENCE = re.compile(r"""(?:url|spec-url)\s*[:=]\s*["']([^"']+)["']""")
INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)
# ReDoc 2 shows its vendor's logo from a CDN in the sidebar; the CSP stops the request before it
# leaves the browser and the image removes itself when it fails to load.
KNOWN_CSP_BLOCKS = ("https://cdn.redoc.ly/redoc/logo-mini.svg",)
CHROMIUM = "/usr/bin/chromium"
# Upper bounds only: on an idle machine each step takes well under a second, but a 2-core box
# that is busy with other work can take many seconds to parse the 1-2 MB bundles.
UI_TIMEOUT_MS = 30_000
SERVER_START_SECONDS = 60
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def referenced_assets(html: str) -> list[str]:
    """The paths of the assets a page links (without their `?v=` version)."""
    return [url.split("?", 1)[0] for url in ASSET_REFERENCE.findall(html)]


def csp_directives(policy: str) -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for part in policy.split(";"):
        words = part.split()
        if words:
            directives[words[0]] = words[1:]
    return directives


@pytest.mark.parametrize("path", [*DOCS_PAGES, "/openapi.json"])
async def test_docs_pages_answer(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    expected = "application/json" if path.endswith(".json") else "text/html"
    assert response.headers["content-type"].startswith(expected)


async def test_openapi_declares_the_password_flow_of_login(client: httpx.AsyncClient) -> None:
    schemes = (await client.get("/openapi.json")).json()["components"]["securitySchemes"]
    flows = [scheme["flows"] for scheme in schemes.values() if scheme["type"] == "oauth2"]
    assert flows and flows[0]["password"]["tokenUrl"] == "/auth/login"


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
async def test_docs_pages_reference_only_local_assets(client: httpx.AsyncClient, path: str) -> None:
    html = (await client.get(path)).text
    assets = referenced_assets(html)
    assert len(assets) >= 2  # the UI's script and the favicon at least
    assert all(asset.startswith("/static/docs/") for asset in assets), assets
    assert SPEC_REFERENCE.findall(html) == ["/openapi.json"]
    assert not re.search(r"https?://", html), "the page names another host"


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
async def test_referenced_assets_are_served_with_their_type(
    client: httpx.AsyncClient, path: str
) -> None:
    html = (await client.get(path)).text
    for asset in referenced_assets(html):
        response = await client.get(asset)
        assert response.status_code == 200, asset
        assert len(response.content) > 0
        allowed = ASSET_TYPES[Path(asset).suffix]
        content_type = response.headers["content-type"].split(";")[0]
        assert content_type in allowed, (asset, content_type)
        # nosniff makes the browser trust that type, so it has to be right.
        assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
async def test_assets_are_versioned_immutable_and_revalidated_by_etag(
    client: httpx.AsyncClient, path: str
) -> None:
    """The assets were re-sent in full on every visit; now they are linked by content hash,
    kept for a year, and a revalidation costs a 304."""
    urls = ASSET_REFERENCE.findall((await client.get(path)).text)
    assert urls
    for url in urls:
        asset_path, _, version = url.partition("?v=")
        content = (ROOT / asset_path.lstrip("/")).read_bytes()
        assert version == hashlib.sha256(content).hexdigest()[:16], url
        response = await client.get(url)
        assert response.status_code == 200 and response.content == content
        assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
        etag = response.headers["etag"]
        again = await client.get(url, headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b""
        assert again.headers["etag"] == etag
        assert again.headers["cache-control"] == "public, max-age=31536000, immutable"


async def test_swagger_page_loads_the_bundle_and_its_stylesheet(
    client: httpx.AsyncClient,
) -> None:
    html = (await client.get("/docs")).text
    assets = referenced_assets(html)
    assert "/static/docs/swagger-ui-bundle.js" in assets
    assert "/static/docs/swagger-ui.css" in assets
    assert 'oauth2RedirectUrl: window.location.origin + "/docs/oauth2-redirect"' in html.replace(
        "'", '"'
    )
    redoc = referenced_assets((await client.get("/redoc")).text)
    assert "/static/docs/redoc.standalone.js" in redoc


async def test_unknown_asset_is_a_json_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/static/docs/nope.js")
    assert response.status_code == 404
    assert response.json()["error_code"] == "NOT_FOUND"


@pytest.mark.parametrize("path", DOCS_PAGES)
async def test_docs_pages_allow_exactly_their_inline_scripts(
    client: httpx.AsyncClient, path: str
) -> None:
    response = await client.get(path)
    directives = csp_directives(response.headers["content-security-policy"])
    hashes = {
        f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
        for body in INLINE_SCRIPT.findall(response.text)
    }
    script_src = directives["script-src"]
    assert set(script_src) == {"'self'", *hashes}
    assert "'unsafe-inline'" not in script_src
    assert "'unsafe-eval'" not in script_src
    assert directives["connect-src"] == ["'self'"]
    assert directives["default-src"] == ["'none'"]
    assert directives["frame-ancestors"] == ["'none'"]


def test_vendored_assets_match_their_checksums() -> None:
    docs = ROOT / "static" / "docs"
    lines = (docs / "SHA256SUMS").read_text().splitlines()
    names = set()
    for line in lines:
        digest, name = line.split(maxsplit=1)
        names.add(name)
        assert hashlib.sha256((docs / name).read_bytes()).hexdigest() == digest, name
    assert {"swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"} <= names


@pytest.mark.parametrize("settings_overrides", [{"docs_enabled": False}])
@pytest.mark.parametrize(
    "path", [*DOCS_PAGES, "/openapi.json", "/static/docs/swagger-ui-bundle.js"]
)
async def test_docs_disabled(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 404
    assert response.json()["error_code"] == "NOT_FOUND"


# --- In a real browser -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def live_server(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`uvicorn main:app` on a free loopback port with a fresh, migrated SQLite file."""
    folder = tmp_path_factory.mktemp("live")
    database = folder / "blog.db"
    shutil.copyfile(sqlite_template, database)
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite+aiosqlite:///{database}",
        "REDIS_URL": "",
        "SECRET_KEY": TEST_SECRET,
        "ENVIRONMENT": "test",
        "DOCS_ENABLED": "true",
        "CORS_ORIGINS": "",
        "RATE_LIMIT_ENABLED": "false",
        "LOG_FORMAT": "text",
        "LOG_LEVEL": "WARNING",
    }
    log = (folder / "server.log").open("w+")
    command = [sys.executable, "-m", "uvicorn", "main:app", "--host", "127.0.0.1"]
    server = subprocess.Popen(
        [*command, "--port", str(port), "--no-access-log", *SERVER_FLAGS],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_SECONDS
        while True:
            if server.poll() is not None:
                log.seek(0)
                pytest.fail(f"the server exited with {server.returncode}:\n{log.read()}")
            try:
                if httpx.get(f"{base_url}/", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"the server did not start in {SERVER_START_SECONDS} s:\n{log.read()}")
            time.sleep(0.1)
        yield base_url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@dataclass
class Offline:
    """Lets only loopback requests through and records every other one."""

    allowed: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    csp_violations: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def route(self, route: Any) -> None:
        url = route.request.url
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob") or parts.hostname in ("127.0.0.1", "localhost"):
            self.allowed.append(url)
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort()

    def console(self, message: Any) -> None:
        if "Content Security Policy" in message.text:
            self.csp_violations.append(message.text)

    def check(self) -> None:
        """Nothing left the machine, the CSP let the UI run, and no script failed."""
        assert any("/static/docs/" in url for url in self.allowed), "requests were not routed"
        assert self.blocked == [], "the page tried to reach another host"
        unexpected = [
            text for text in self.csp_violations if not any(url in text for url in KNOWN_CSP_BLOCKS)
        ]
        assert unexpected == []
        assert self.page_errors == []


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium driven by Playwright (no downloaded browser build)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (requirements-dev.txt)"
    )
    sync_api.expect.set_options(timeout=UI_TIMEOUT_MS)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def offline_page(browser: Any) -> Iterator[tuple[Any, Offline]]:
    """A fresh page that can reach nothing but loopback."""
    offline = Offline()
    context = browser.new_context()
    try:
        context.set_default_timeout(UI_TIMEOUT_MS)
        context.route("**/*", offline.route)
        page = context.new_page()
        page.on("console", offline.console)
        page.on("pageerror", lambda error: offline.page_errors.append(str(error)))
        yield page, offline
    finally:
        context.close()


def test_swagger_ui_works_in_a_browser_without_internet(
    live_server: str, offline_page: tuple[Any, Offline]
) -> None:
    from playwright.sync_api import expect

    page, offline = offline_page
    username = "docs_reader"
    response = httpx.post(
        f"{live_server}/auth/register",
        json={"username": username, "email": "reader@example.com", "password": PASSWORD},
        timeout=30,
    )
    assert response.status_code == 201, response.text

    # Every operation of /openapi.json is rendered.
    page.goto(f"{live_server}/docs")
    expect(page.locator(".opblock-summary-path", has_text="/posts").first).to_be_visible()
    expect(page.locator("#operations-auth-read_me")).to_contain_text("Read Me")
    expect(page.locator("#operations-posts-list_posts")).to_contain_text("List Posts")

    # "Authorize": the OAuth2 password flow against POST /auth/login.
    page.locator("button.authorize").first.click()
    dialog = page.locator(".modal-ux")
    dialog.locator("#oauth_username").fill(username)
    dialog.locator("#oauth_password").fill(PASSWORD)
    dialog.locator("button.modal-btn.authorize").click()
    expect(dialog.locator("button.modal-btn", has_text="Logout")).to_be_visible()
    expect(dialog).to_contain_text("Authorized")
    dialog.get_by_role("button", name="Close").first.click()
    expect(dialog).to_have_count(0)

    # "Try it out" -> "Execute" on GET /users/me sends the token it got.
    operation = page.locator("#operations-auth-read_me")
    operation.locator(".opblock-summary").click()
    operation.get_by_role("button", name="Try it out").click()
    operation.get_by_role("button", name="Execute").click()
    live = operation.locator(".live-responses-table")
    expect(live.locator("tr.response .response-col_status")).to_have_text("200")
    expect(live.locator("tr.response .response-col_description")).to_contain_text(
        f'"username": "{username}"'
    )
    offline.check()


def test_redoc_works_in_a_browser_without_internet(
    live_server: str, offline_page: tuple[Any, Offline]
) -> None:
    from playwright.sync_api import expect

    page, offline = offline_page
    page.goto(f"{live_server}/redoc")
    expect(page.get_by_role("heading", name="Read Me")).to_be_visible()
    expect(page.get_by_role("heading", name="List Posts")).to_be_visible()
    expect(page.locator("body")).to_contain_text("/users/me")
    # The search box works: it runs in ReDoc's blob: worker, which the CSP must allow.
    page.get_by_placeholder("Search...").fill("comments")
    expect(page.locator("[data-role='search:results']")).to_contain_text("List Comments")
    offline.check()
