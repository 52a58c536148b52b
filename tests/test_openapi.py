"""The OpenAPI document says what generated clients need to call the service correctly.

Each test pins one property that a generator (openapi-python-client) or a linter relies on;
tests/test_generated_client.py drives a generated client against the service.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from conftest import TEST_SECRET

from config import Settings
from main import create_app


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What /openapi.json serves; building it needs no database or Redis."""
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('openapi') / 'unused.db'}"
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, database_url=url, secret_key=TEST_SECRET, environment="test"
    )
    return create_app(settings).openapi()


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]


async def test_metrics_declares_its_errors_as_json(
    client: httpx.AsyncClient, document: dict[str, Any]
) -> None:
    responses = document["paths"]["/metrics"]["get"]["responses"]
    assert list(responses["200"]["content"]) == ["text/plain"]
    assert list(responses["401"]["content"]) == ["application/json"]
    # ... and that is what it sends.
    answer = await client.get("/metrics", headers={"Authorization": "Bearer nonsense"})
    assert answer.status_code == 401
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["error_code"] == "INVALID_TOKEN"


def test_header_parameters_are_strings_never_null(document: dict[str, Any]) -> None:
    headers = {
        (operation["operationId"], parameter["name"].lower()): parameter["schema"]
        for _, _, operation in operations(document)
        for parameter in operation.get("parameters", [])
        if parameter["in"] == "header"
    }
    assert ("get_post", "if-none-match") in headers
    assert ("update_post", "if-match") in headers
    assert ("create_post", "idempotency-key") in headers
    assert ("create_comment", "idempotency-key") in headers
    for where, schema in headers.items():
        assert schema["type"] == "string", where
        assert "anyOf" not in schema, where
    assert headers["create_post", "idempotency-key"]["maxLength"] == 255


def test_summaries_name_the_operation_ids(document: dict[str, Any]) -> None:
    for method, path, operation in operations(document):
        expected = operation["operationId"].replace("_", " ").title()
        assert operation["summary"] == expected, (method, path)


def test_security_says_which_operations_need_a_token(document: dict[str, Any]) -> None:
    bearer = {"OAuth2PasswordBearer": []}
    security = {op["operationId"]: op.get("security") for _, _, op in operations(document)}
    assert security["register"] == security["login"] == []
    for optional in ["list_posts", "get_post", "list_comments", "liveness", "readiness"]:
        assert security[optional] == [{}, bearer], optional
    for required in ["read_me", "create_post", "update_post", "delete_post", "create_comment"]:
        assert security[required] == [bearer], required
    assert all(value is not None for value in security.values())


def test_document_names_its_servers_and_license(document: dict[str, Any]) -> None:
    assert document["servers"] and document["servers"][0]["url"]
    assert document["info"]["license"]["name"]


def test_login_form_and_sort_order_have_readable_names(document: dict[str, Any]) -> None:
    body = document["paths"]["/auth/login"]["post"]["requestBody"]["content"]
    form = body["application/x-www-form-urlencoded"]["schema"]
    assert form == {"$ref": "#/components/schemas/LoginForm"}
    schemas = document["components"]["schemas"]
    assert not [name for name in schemas if name.startswith("Body_")]
    sort = schemas["PostSort"]
    names = dict(zip(sort["enum"], sort["x-enum-varnames"], strict=True))
    assert names["-created_at"] == "CREATED_DESC" and names["title"] == "TITLE_ASC"
    assert all(name.isidentifier() for name in names.values())


def test_validation_findings_are_typed(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    detail = schemas["ErrorResponse"]["properties"]["detail"]["anyOf"]
    assert {"type": "string"} in detail
    assert {"type": "array", "items": {"$ref": "#/components/schemas/ValidationErrorItem"}} in [
        {key: option[key] for key in ("type", "items") if key in option} for option in detail
    ]
    item = schemas["ValidationErrorItem"]
    assert set(item["required"]) == {"loc", "msg", "type"}


@pytest.mark.parametrize(
    ("model", "field"),
    [
        ("ErrorResponse", "request_id"),
        ("Readiness", "detail"),
        ("Readiness", "error_code"),
        ("LoginForm", "client_id"),
    ],
)
def test_optional_fields_are_never_null(document: dict[str, Any], model: str, field: str) -> None:
    schema = document["components"]["schemas"][model]
    assert schema["properties"][field]["type"] == "string"
    assert "anyOf" not in schema["properties"][field]
    assert field not in schema.get("required", [])


@pytest.mark.parametrize(("model", "field"), [("Token", "token_type"), ("Status", "status")])
def test_fields_always_sent_are_required(document: dict[str, Any], model: str, field: str) -> None:
    assert field in document["components"]["schemas"][model]["required"]


def test_errors_500_and_503_are_declared(document: dict[str, Any]) -> None:
    for method, path, operation in operations(document):
        responses = operation["responses"]
        assert "500" in responses, (method, path)
        if path.startswith(("/auth", "/users", "/posts")):
            assert responses["503"]["headers"]["Retry-After"]["required"], (method, path)
            assert "Retry-After" in responses["429"]["headers"], (method, path)


def test_response_headers_are_declared(document: dict[str, Any]) -> None:
    def headers(path: str, method: str, status: str) -> dict[str, Any]:
        found: dict[str, Any] = document["paths"][path][method]["responses"][status]["headers"]
        return found

    assert {"ETag", "X-Cache"} <= set(headers("/posts/{post_id}", "get", "200"))
    assert {"ETag", "X-Cache"} <= set(headers("/posts/{post_id}", "get", "304"))
    assert "ETag" in headers("/posts/{post_id}", "patch", "200")
    assert {"Link", "X-Total-Count"} <= set(headers("/posts", "get", "200"))
    assert "Link" in headers("/posts/{post_id}/comments", "get", "200")
    assert {"Location", "Idempotent-Replayed"} <= set(headers("/posts", "post", "201"))
    assert "Idempotent-Replayed" in headers("/posts/{post_id}/comments", "post", "201")
    rate_limits = {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"}
    assert rate_limits <= set(headers("/posts", "get", "200"))
    assert not rate_limits & set(headers("/", "get", "200"))  # never limited
    for method, path, operation in operations(document):
        for status, response in operation["responses"].items():
            assert response["headers"]["X-Request-ID"]["required"], (method, path, status)
