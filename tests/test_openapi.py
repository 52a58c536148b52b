"""The OpenAPI document says what generated clients need to call the service correctly.

Each test pins one property that a generator (openapi-python-client) or a linter relies on;
tests/test_generated_client.py drives a generated client against the service.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest


@pytest.fixture
async def document(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    spec: dict[str, Any] = response.json()
    return spec


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
