"""The deployment start command outside Docker: `docker/start.sh` migrates a private PostgreSQL
database and serves it with two workers; a server that cannot reach its database stops at once
with one clear line instead of a traceback."""

from __future__ import annotations

import gc
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import ROOT
from test_manage import UNREACHABLE_URL, command_env
from test_manage import private_postgres as private_postgres  # the fixture, shared
from worker_processes import SERVER_FLAGS

from config import Settings
from main import create_app

START_SCRIPT = ROOT / "docker" / "start.sh"
STARTUP_TIMEOUT = 120.0  # seconds; generous for a loaded CI machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def process_group(pgid: int) -> dict[int, str]:
    """The processes of a process group (Linux /proc): pid -> command line."""
    members = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:
            members[int(entry.name)] = cmdline
    return members


def stop_group(process: subprocess.Popen[bytes], timeout: float = 60) -> int:
    """SIGTERM the whole group, as `docker stop` would the container; SIGKILL if it hangs."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        raise


def wait_for(url: str, process: subprocess.Popen[bytes], log: Path) -> httpx.Response:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}:\n{log.read_text()}")
        try:
            response = httpx.get(url, timeout=5)
            if response.status_code == 200:
                return response
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    pytest.fail(f"{url} did not answer 200 within {STARTUP_TIMEOUT}s:\n{log.read_text()}")


async def test_start_up_freezes_what_it_built_out_of_the_cyclic_gc(settings: Settings) -> None:
    """Start-up objects live as long as the worker: full collections skip them (gc.freeze),
    and shutdown hands them back, so apps started and stopped in one process leak nothing."""
    application = create_app(settings)
    assert gc.get_freeze_count() == 0
    async with application.router.lifespan_context(application):
        assert gc.get_freeze_count() > 10_000
    assert gc.get_freeze_count() == 0


@pytest.mark.postgres
@pytest.mark.slow
def test_start_script_migrates_and_serves_with_two_workers(
    private_postgres: str, tmp_path: Path
) -> None:
    log_file = tmp_path / "server.log"
    port = free_port()
    env = command_env(
        private_postgres,
        PORT=str(port),
        HOST="127.0.0.1",
        WEB_CONCURRENCY="2",
        PYTHON=sys.executable,
    )
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            ["sh", str(START_SCRIPT)],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, stopped as a whole below
        )
    try:
        base = f"http://127.0.0.1:{port}"
        assert wait_for(f"{base}/", process, log_file).json() == {"status": "ok"}
        ready = wait_for(f"{base}/health/ready", process, log_file).json()
        assert ready["status"] == "ok" and ready["database"] == "ok"
        # The schema is there: migrate ran before the server.
        listing = httpx.get(f"{base}/posts", timeout=10)
        assert listing.status_code == 200 and listing.json() == []
        # exec: the script became uvicorn's supervisor, which runs two worker processes.
        group = process_group(process.pid)
        assert "uvicorn main:app" in group[process.pid], group
        workers = [pid for pid, cmdline in group.items() if "spawn_main" in cmdline]
        assert len(workers) == 2, group
    finally:
        returncode = stop_group(process)
    output = log_file.read_text()
    assert returncode == 0, output
    assert "Running upgrade" in output  # migrate's log
    assert "Traceback" not in output


def test_start_script_stops_at_an_unreachable_database() -> None:
    port = free_port()
    env = command_env(UNREACHABLE_URL, PORT=str(port), PYTHON=sys.executable)
    started = time.monotonic()
    result = subprocess.run(
        ["sh", str(START_SCRIPT)], env=env, capture_output=True, text=True, timeout=90
    )
    assert time.monotonic() - started < 60
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(
        "error: cannot reach the database at postgresql+asyncpg://root@127.0.0.1:1/x: "
    )
    assert "Uvicorn running" not in result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("log_format", ["json", "text"])
def test_server_with_unreachable_database_exits_cleanly(log_format: str, tmp_path: Path) -> None:
    env = command_env("postgresql://root@127.0.0.1:1/nope", LOG_FORMAT=log_format)
    started = time.monotonic()
    result = subprocess.run(
        [
            *(sys.executable, "-m", "uvicorn", "main:app", "--app-dir", str(ROOT)),
            *("--host", "127.0.0.1", "--port", str(free_port()), *SERVER_FLAGS),
        ],
        env=env,
        cwd=tmp_path,  # no .env here
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert time.monotonic() - started < 60
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output
    assert "DatabaseUnavailable" not in output
    reasons = [line for line in output.splitlines() if "cannot reach the database" in line]
    assert len(reasons) == 1, output
    assert "Connection refused" in reasons[0] or "Connect call failed" in reasons[0]
    assert "postgresql+asyncpg://root@127.0.0.1:1/nope" in reasons[0]  # where it tried
