"""Schemathesis over every operation of our own OpenAPI document, signed in and anonymous.

A bounded, derandomized run for CI; `make fuzz` (scripts/fuzz.sh) is the longer one against a real
server with every check. Findings are fixed in the code or the schema, never by excluding checks.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from conftest import PASSWORD, TEST_SECRET, alembic_upgrade
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.python import asgi

from config import Settings
from main import create_app

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


def _load_schema() -> Any:
    """The app on a migrated SQLite file of its own (rate limits off), loaded over ASGI.

    Built at import because `schema.parametrize()` needs the operations at collection time;
    Schemathesis runs the app's lifespan itself and ends it after each test item.
    """
    directory = tempfile.mkdtemp(prefix="blog-fuzz-")
    # Registered before Schemathesis' own exit hook, so it runs after the lifespan has ended.
    atexit.register(shutil.rmtree, directory, True)
    url = f"sqlite+aiosqlite:///{Path(directory) / 'blog.db'}"
    alembic_upgrade(url)
    fuzz_settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=url,
        secret_key=TEST_SECRET,
        environment="test",
        log_format="text",
        rate_limit_enabled=False,
    )
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(fuzz_settings))


schema = _load_schema()


@pytest.fixture(scope="module")
def signed_in() -> dict[str, str]:
    """A registered user with a post and a comment, so some generated ids hit real objects."""
    with asgi.get_client(schema.app) as http:
        response = http.post(
            "/auth/register",
            json={"username": "fuzzer", "email": "fuzzer@example.com", "password": PASSWORD},
        )
        assert response.status_code == 201, response.text
        response = http.post("/auth/login", data={"username": "fuzzer", "password": PASSWORD})
        assert response.status_code == 200, response.text
        headers = {"Authorization": f"Bearer {response.json()['access_token']}"}
        post = http.post("/posts", json={"title": "Seed", "content": "Seed post"}, headers=headers)
        assert post.status_code == 201, post.text
        comment = http.post(
            f"/posts/{post.json()['id']}/comments", json={"text": "Seed comment"}, headers=headers
        )
        assert comment.status_code == 201, comment.text
    return headers


FUZZ_SETTINGS = settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@schema.parametrize()
@FUZZ_SETTINGS
def test_api_contract_anonymous(case: Any) -> None:
    case.call_and_validate(checks=CHECKS)


@schema.parametrize()
@FUZZ_SETTINGS
def test_api_contract_signed_in(case: Any, signed_in: dict[str, str]) -> None:
    case.call_and_validate(headers=signed_in, checks=CHECKS)
