"""A client generated from /openapi.json by openapi-python-client works against the service.

The generator runs once per module into a temporary folder; the generated package is imported from
there and drives a short scenario through the app (in process, over httpx's ASGI transport):
register, login, an idempotent create, a list, a conditional read, a conditional update, and the
error answers a client must be able to parse.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from conftest import PASSWORD, TEST_SECRET
from fastapi import FastAPI

from config import Settings
from main import create_app

PACKAGE = "blog_api_client"
GENERATOR = Path(sys.executable).with_name("openapi-python-client")
CONFIG = (
    f"project_name_override: blog-api-client\npackage_name_override: {PACKAGE}\npost_hooks: []\n"
)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The generated package, as a namespace of its modules."""
    assert GENERATOR.exists(), f"{GENERATOR} is missing: install requirements-dev.txt"
    folder = tmp_path_factory.mktemp("client")
    url = f"sqlite+aiosqlite:///{folder / 'unused.db'}"
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, database_url=url, secret_key=TEST_SECRET, environment="test"
    )
    (folder / "openapi.json").write_text(json.dumps(create_app(settings).openapi()))
    (folder / "config.yaml").write_text(CONFIG)
    command = [str(GENERATOR), "generate", "--path", "openapi.json", "--config", "config.yaml"]
    result = subprocess.run(
        [*command, "--meta", "none", "--output-path", PACKAGE],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # Warnings mean parts of the document were skipped: a schema the generator cannot read.
    assert result.returncode == 0 and "Warning" not in result.stdout, result.stdout + result.stderr
    sys.path.insert(0, str(folder))
    try:
        yield _Modules(importlib.import_module(PACKAGE))
    finally:
        sys.path.remove(str(folder))
        for name in [name for name in sys.modules if name.split(".")[0] == PACKAGE]:
            del sys.modules[name]


class _Modules:
    """`generated.api.posts.create_post` and friends, imported on first use."""

    def __init__(self, package: ModuleType, name: str = PACKAGE) -> None:
        self._package = package
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        if hasattr(self._package, attribute):
            found = getattr(self._package, attribute)
        else:
            found = importlib.import_module(f"{self._name}.{attribute}")
        return (
            _Modules(found, f"{self._name}.{attribute}") if isinstance(found, ModuleType) else found
        )


def _clients(generated: Any, app: FastAPI, token: str | None = None) -> Any:
    options: dict[str, Any] = {
        "base_url": "http://test",
        "raise_on_unexpected_status": True,  # an answer the document does not declare fails
        "httpx_args": {"transport": httpx.ASGITransport(app=app)},
    }
    if token is None:
        return generated.client.Client(**options)
    return generated.client.AuthenticatedClient(token=token, **options)


async def test_a_generated_client_drives_the_api(generated: Any, app: FastAPI) -> None:
    api, models = generated.api, generated.models
    anonymous = _clients(generated, app)

    user = await api.auth.register.asyncio(
        client=anonymous,
        body=models.UserCreate(username="alice", email="alice@example.com", password=PASSWORD),
    )
    assert isinstance(user, models.UserRead) and user.role == models.UserReadRole.USER
    taken = await api.auth.register.asyncio(
        client=anonymous,
        body=models.UserCreate(username="ALICE", email="other@example.com", password=PASSWORD),
    )
    assert isinstance(taken, models.ErrorResponse) and taken.error_code == "USERNAME_TAKEN"

    token = await api.auth.login.asyncio(
        client=anonymous, body=models.LoginForm(username="alice", password=PASSWORD)
    )
    assert isinstance(token, models.Token) and token.token_type == "bearer"
    refused = await api.auth.login.asyncio(
        client=anonymous, body=models.LoginForm(username="alice", password="wrong password")
    )
    assert isinstance(refused, models.ErrorResponse)
    assert refused.error_code == "INVALID_CREDENTIALS"
    alice = _clients(generated, app, token.access_token)
    me = await api.auth.read_me.asyncio(client=alice)
    assert me.username == "alice"

    # An idempotent create: the retry replays the first answer.
    body = models.PostCreate(title="Generated", content="Written by a generated client.")
    created = await api.posts.create_post.asyncio_detailed(
        client=alice, body=body, idempotency_key="first-post"
    )
    assert created.status_code == 201 and isinstance(created.parsed, models.PostRead)
    post = created.parsed
    assert created.headers["Location"] == f"/posts/{post.id}"
    replayed = await api.posts.create_post.asyncio_detailed(
        client=alice, body=body, idempotency_key="first-post"
    )
    assert replayed.parsed.id == post.id
    assert replayed.headers["Idempotent-Replayed"] == "true"

    # A list, anonymous (the token is optional there), with the typed sort order.
    listed = await api.posts.list_posts.asyncio_detailed(
        client=anonymous, sort=models.PostSort.TITLE_DESC, count=True
    )
    assert [item.id for item in listed.parsed] == [post.id]
    assert listed.headers["X-Total-Count"] == "1"

    # A conditional read and a conditional update.
    read = await api.posts.get_post.asyncio_detailed(post.id, client=anonymous)
    etag = read.headers["ETag"]
    assert read.parsed.title == "Generated"
    unchanged = await api.posts.get_post.asyncio_detailed(
        post.id, client=anonymous, if_none_match=etag
    )
    assert unchanged.status_code == 304 and unchanged.parsed is None
    edited = await api.posts.update_post.asyncio_detailed(
        post.id, client=alice, body=models.PostUpdate(content="Edited"), if_match=etag
    )
    assert edited.status_code == 200 and edited.parsed.content == "Edited"
    assert edited.headers["ETag"] != etag
    stale = await api.posts.update_post.asyncio(
        post.id, client=alice, body=models.PostUpdate(content="Lost update"), if_match=etag
    )
    assert isinstance(stale, models.ErrorResponse)
    assert stale.error_code == "PRECONDITION_FAILED"

    # Errors a client must parse: a typed validation finding, a 404, a 401 on /metrics.
    invalid = await api.posts.create_post.asyncio(
        client=alice, body=models.PostCreate(title=" ", content="x")
    )
    assert isinstance(invalid, models.ErrorResponse)
    assert invalid.error_code == "VALIDATION_ERROR"
    finding = invalid.detail[0]
    assert isinstance(finding, models.ValidationErrorItem)
    assert finding.loc == ["body", "title"] and finding.type_  # "type" is a builtin
    missing = await api.posts.get_post.asyncio(post.id + 1000, client=anonymous)
    assert isinstance(missing, models.ErrorResponse) and missing.error_code == "POST_NOT_FOUND"
    bad_token = _clients(generated, app, "not-a-token")
    metrics = await api.health.metrics.asyncio(client=bad_token)
    assert isinstance(metrics, models.ErrorResponse) and metrics.error_code == "INVALID_TOKEN"
    text = await api.health.metrics.asyncio(client=anonymous)
    assert isinstance(text, str) and "# TYPE" in text
