"""Security headers on every response, and CORS only where configured."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from conftest import TEST_SECRET

from config import Settings
from main import create_app
from security_headers import API_CONTENT_SECURITY_POLICY

BASELINE = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}
ALLOWED_ORIGIN = "https://app.example.com"
OTHER_ORIGIN = "https://evil.example.net"


def csp_directives(policy: str) -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for part in policy.split(";"):
        words = part.split()
        if words:
            directives[words[0]] = words[1:]
    return directives


def assert_api_headers(response: httpx.Response) -> None:
    for name, value in BASELINE.items():
        assert response.headers.get(name) == value, (name, response.status_code)
    assert response.headers.get("content-security-policy") == API_CONTENT_SECURITY_POLICY
    assert len(response.headers.get_list("x-frame-options")) == 1


async def test_headers_on_200(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert_api_headers(response)


async def test_headers_on_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/no/such/route")
    assert response.status_code == 404
    assert_api_headers(response)


async def test_headers_on_405(client: httpx.AsyncClient) -> None:
    response = await client.delete("/")
    assert response.status_code == 405
    assert_api_headers(response)


async def test_headers_on_401(client: httpx.AsyncClient) -> None:
    response = await client.get("/users/me")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert_api_headers(response)


async def test_headers_on_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/auth/register", json={"username": "x"})
    assert response.status_code == 422
    assert_api_headers(response)


async def test_headers_on_413(client: httpx.AsyncClient, user_headers: dict[str, str]) -> None:
    body = b'{"title": "big", "content": "' + b"a" * (1024 * 1024 + 1) + b'"}'
    response = await client.post(
        "/posts", content=body, headers={**user_headers, "Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["error_code"] == "PAYLOAD_TOO_LARGE"
    assert_api_headers(response)


@pytest.fixture
async def crashing_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The real application plus one route that raises."""
    application = create_app(settings)

    async def crash() -> None:
        raise RuntimeError("boom")

    application.add_api_route("/test-crash", crash, methods=["GET"])
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield http


async def test_headers_on_500(crashing_client: httpx.AsyncClient) -> None:
    response = await crashing_client.get("/test-crash")
    assert response.status_code == 500
    assert response.json()["error_code"] == "INTERNAL_ERROR"
    assert "boom" not in response.text
    assert_api_headers(response)


async def test_headers_on_static_assets(client: httpx.AsyncClient) -> None:
    response = await client.get("/static/docs/swagger-ui.css")
    assert response.status_code == 200
    assert_api_headers(response)


async def test_json_policy_is_strict(client: httpx.AsyncClient) -> None:
    policy = (await client.get("/")).headers["content-security-policy"]
    directives = csp_directives(policy)
    assert directives["default-src"] == ["'none'"]
    assert directives["frame-ancestors"] == ["'none'"]
    assert "unsafe" not in policy
    assert "'self'" not in policy


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
async def test_docs_policy_lets_the_ui_run(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    for name, value in BASELINE.items():
        assert response.headers[name] == value
    directives = csp_directives(response.headers["content-security-policy"])
    assert "'self'" in directives["script-src"]
    assert "'self'" in directives["style-src"]
    assert {"'self'", "data:"} <= set(directives["img-src"])
    assert directives["connect-src"] == ["'self'"]
    assert "blob:" in directives["worker-src"]
    assert directives["frame-ancestors"] == ["'none'"]
    assert directives["default-src"] == ["'none'"]


# --- CORS ----------------------------------------------------------------------------------------


def preflight(origin: str, method: str = "POST") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization, content-type",
    }


async def test_no_cors_headers_by_default(client: httpx.AsyncClient) -> None:
    simple = await client.get("/posts", headers={"Origin": ALLOWED_ORIGIN})
    assert simple.status_code == 200
    assert not any(name.startswith("access-control-") for name in simple.headers)
    options = await client.options("/posts", headers=preflight(ALLOWED_ORIGIN))
    assert not any(name.startswith("access-control-") for name in options.headers)


@pytest.mark.parametrize("settings_overrides", [{"cors_origins": [ALLOWED_ORIGIN]}])
async def test_cors_allowed_origin(client: httpx.AsyncClient) -> None:
    simple = await client.get("/posts", headers={"Origin": ALLOWED_ORIGIN})
    assert simple.status_code == 200
    assert simple.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert simple.headers["access-control-allow-credentials"] == "true"
    assert "origin" in simple.headers["vary"].lower()
    exposed = {
        h.strip().lower() for h in simple.headers["access-control-expose-headers"].split(",")
    }
    assert {
        "x-request-id",
        "x-process-time",
        "link",
        "etag",
        "location",
        "x-total-count",
        "x-cache",
        "idempotent-replayed",
    } <= exposed
    assert_api_headers(simple)

    options = await client.options("/posts", headers=preflight(ALLOWED_ORIGIN))
    assert options.status_code == 200
    assert options.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "POST" in options.headers["access-control-allow-methods"]
    allowed_headers = options.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed_headers
    assert "content-type" in allowed_headers


@pytest.mark.parametrize("settings_overrides", [{"cors_origins": [ALLOWED_ORIGIN]}])
async def test_cors_disallowed_origin(client: httpx.AsyncClient) -> None:
    simple = await client.get("/posts", headers={"Origin": OTHER_ORIGIN})
    assert simple.status_code == 200
    # No Access-Control-Allow-Origin, so the browser withholds the response from the page.
    # (Starlette still adds its fixed Allow-Credentials / Expose-Headers; without ACAO they
    # grant nothing.)
    assert "access-control-allow-origin" not in simple.headers
    assert "origin" in simple.headers["vary"].lower()

    options = await client.options("/posts", headers=preflight(OTHER_ORIGIN))
    assert options.status_code == 400
    assert "access-control-allow-origin" not in options.headers


@pytest.mark.parametrize("settings_overrides", [{"cors_origins": ["*"]}])
@pytest.mark.parametrize("extra", [{}, {"Cookie": "session=1"}])
async def test_cors_wildcard_never_allows_credentials(
    client: httpx.AsyncClient, extra: dict[str, str]
) -> None:
    simple = await client.get("/posts", headers={"Origin": OTHER_ORIGIN, **extra})
    assert simple.status_code == 200
    assert simple.headers["access-control-allow-origin"] in ("*", OTHER_ORIGIN)
    assert "access-control-allow-credentials" not in simple.headers

    options = await client.options("/posts", headers={**preflight(OTHER_ORIGIN), **extra})
    assert options.status_code == 200
    assert options.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in options.headers


def test_cors_setting_reads_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORS_ORIGINS", f"{ALLOWED_ORIGIN}, https://other.example.com")
    settings = Settings(_env_file=None, secret_key=TEST_SECRET)
    assert settings.cors_origins == [ALLOWED_ORIGIN, "https://other.example.com"]


async def test_no_server_header_even_if_something_sets_one() -> None:
    """uvicorn's own is off in every start command (test_hardening); the app drops any other."""
    from starlette.responses import PlainTextResponse

    from edge import EdgeMiddleware

    inner = PlainTextResponse("hi", headers={"Server": "framework/1.0"})
    transport = httpx.ASGITransport(app=EdgeMiddleware(inner))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        response = await http.get("/")
    assert response.status_code == 200
    assert "server" not in response.headers


async def test_the_app_s_own_vary_cache_control_and_policy_are_kept() -> None:
    """The edge adds to the response's Vary and keeps the Cache-Control,
    Content-Security-Policy and X-Frame-Options it chose itself, each once."""
    from starlette.responses import PlainTextResponse

    from edge import EdgeMiddleware

    inner = PlainTextResponse(
        "hi",
        headers={
            "Vary": "Origin",
            "Cache-Control": "max-age=60",
            "Content-Security-Policy": "default-src 'self'",
            "X-Frame-Options": "SAMEORIGIN",
        },
    )
    transport = httpx.ASGITransport(app=EdgeMiddleware(inner))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        response = await http.get("/posts")
    assert response.headers.get_list("vary") == ["Origin, Authorization"]
    assert response.headers.get_list("cache-control") == ["max-age=60"]
    assert response.headers.get_list("content-security-policy") == ["default-src 'self'"]
    assert response.headers.get_list("x-frame-options") == ["SAMEORIGIN"]
    assert response.headers["x-content-type-options"] == "nosniff"
