"""The ways FastAPI users start an app: `fastapi run`, `fastapi dev` (whose reloader must not
restart on the SQLite file's writes) and `python main.py`, each in a directory of its own with
the default `./blog.db`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import ROOT
from test_startup import clean_env, free_port

pytestmark = pytest.mark.slow

STARTUP_TIMEOUT = 90.0
FASTAPI = Path(sys.executable).parent / "fastapi"
LEFT_OUT = {"tests", "bench", "docker", ".git", ".venv", "__pycache__"}


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """The project's files, linked into an empty directory (no blog.db, .env or .secret_key):
    where a developer who just cloned it would stand."""
    directory = tmp_path / "project"
    directory.mkdir()
    for entry in ROOT.iterdir():
        if entry.name in LEFT_OUT or entry.name.startswith(("blog.db", ".env", ".secret_key")):
            continue
        (directory / entry.name).symlink_to(entry)
    return directory


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def start(
    command: list[str], cwd: Path, started: list[subprocess.Popen[bytes]], **env: str
) -> tuple[str, Path]:
    """Start `command` in `cwd` and wait until it answers `GET /`; its base URL and log."""
    port = free_port()
    log = cwd.parent / "server.log"
    variables = clean_env(PORT=str(port), **env)
    variables.pop("LOG_FORMAT")
    with log.open("wb") as output:
        process = subprocess.Popen(
            [part.replace("{port}", str(port)) for part in command],
            cwd=cwd,
            env=variables,
            stdout=output,
            stderr=output,
            start_new_session=True,
        )
    started.append(process)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{command} exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/", timeout=5).status_code == 200:
                return url, log
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    pytest.fail(f"{command} did not answer:\n{log.read_text()}")


def use_the_api(url: str) -> None:
    ready = httpx.get(f"{url}/health/ready", timeout=10)
    assert ready.status_code == 200, ready.text
    registered = httpx.post(
        f"{url}/auth/register",
        json={"username": "cli_user", "email": "cli@example.com", "password": "password123"},
        timeout=30,
    )
    assert registered.status_code == 201, registered.text


def test_fastapi_run(project_copy: Path, started: list[subprocess.Popen[bytes]]) -> None:
    url, log = start([str(FASTAPI), "run", "--port", "{port}"], project_copy, started)
    use_the_api(url)
    assert (project_copy / "blog.db").is_file()
    assert "main:app" in log.read_text()  # pyproject.toml's [tool.fastapi] entrypoint


def test_fastapi_dev_does_not_reload_on_database_writes(
    project_copy: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    url, log = start([str(FASTAPI), "dev", "--port", "{port}"], project_copy, started)
    use_the_api(url)
    for number in range(3):  # more writes to blog.db and its -wal file
        httpx.post(
            f"{url}/auth/register",
            json={
                "username": f"writer{number}",
                "email": f"w{number}@example.com",
                "password": "password123",
            },
            timeout=30,
        )
    time.sleep(2)  # watchfiles reports changes within its debounce of ~1.6 s
    output = log.read_text()
    assert "Started reloader process" in output, output
    assert "Reloading" not in output and "detected changes" not in output, output
    assert output.count("Application startup complete") == 1, output


def test_python_main_py_serves(project_copy: Path, started: list[subprocess.Popen[bytes]]) -> None:
    url, _log = start([sys.executable, "main.py"], project_copy, started)
    use_the_api(url)


def test_fastapi_is_installed_with_the_requirements() -> None:
    assert FASTAPI.is_file() or shutil.which("fastapi")
    requirements = (ROOT / "requirements.txt").read_text()
    assert "fastapi-cli==" in requirements
