"""What a real server does with hostile HTTP (uvicorn's own behaviour matters here): every start
command passes the same flags; no `server` header; X-Forwarded-For believed by the app alone;
request heads capped in size and time; slow bodies answered 408."""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ROOT, alembic_upgrade
from worker_processes import SERVER_FLAGS, WorkerProcesses

import http_protocol

pytestmark = pytest.mark.slow
TIMEOUT = 10.0


def test_every_start_command_passes_the_server_flags() -> None:
    """Makefile run, Procfile, docker/start.sh, the fuzz script, bench and the test servers."""
    makefile = (ROOT / "Makefile").read_text()
    declared = re.search(r"^SERVER_FLAGS := (.*)$", makefile, re.MULTILINE)
    assert declared is not None and declared.group(1).split() == list(SERVER_FLAGS)
    run_target = makefile.split("\nrun:", 1)[1].split("\n\n", 1)[0]
    assert "$(SERVER_FLAGS)" in run_target
    assert "--ws-max-size 65536" in run_target
    for name in ("Procfile", "docker/start.sh", "scripts/fuzz.sh"):
        text = " ".join((ROOT / name).read_text().replace("\\\n", " ").split())
        assert " ".join(SERVER_FLAGS) in text, name
        if name != "scripts/fuzz.sh":  # production start commands cap WebSocket frames too
            assert "--ws-max-size 65536" in text, name
    bench = (ROOT / "bench" / "common.py").read_text()
    assert all(f'"{flag}"' in bench for flag in SERVER_FLAGS)
    for name in ("bench/run.py", "bench/soak.py", "tests/worker_processes.py"):
        assert "*SERVER_FLAGS" in (ROOT / name).read_text(), name


def sqlite_database(folder: Path) -> str:
    url = f"sqlite+aiosqlite:///{folder / 'blog.db'}"
    alembic_upgrade(url)
    return url


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcesses]:
    """One worker with the defaults (no proxy believed), short head and body deadlines."""
    folder = tmp_path_factory.mktemp("hardening")
    env = {
        "DATABASE_URL": sqlite_database(folder),
        "LOG_FORMAT": "json",
        "REQUEST_HEAD_TIMEOUT_SECONDS": "1",
        "REQUEST_BODY_TIMEOUT_SECONDS": "1",
    }
    # Unset, as by default (uvicorn would read it too: empty would hide its 127.0.0.1 default).
    assert "FORWARDED_ALLOW_IPS" not in os.environ
    with WorkerProcesses(env, folder / "server.log", workers=1) as workers:
        yield workers


def access_lines(server: WorkerProcesses) -> list[dict[str, Any]]:
    lines = []
    for line in server.log_text().splitlines():
        if line.startswith("{") and '"blog.access"' in line:
            lines.append(json.loads(line))
    return lines


def logged_clients(server: WorkerProcesses, request_ids: set[str]) -> dict[str, str]:
    """The client_ip of each request's access line (written just after its answer is sent)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        logged = {line["request_id"]: line["client_ip"] for line in access_lines(server)}
        if request_ids <= logged.keys() or time.monotonic() > deadline:
            return logged
        time.sleep(0.05)


def raw_exchange(port: int, data: bytes, wait: float = TIMEOUT) -> tuple[bytes, float]:
    """Send `data`, read until the server closes; the answer and the seconds it took."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks), time.monotonic() - started


def envelope(answer: bytes) -> tuple[int, dict[str, Any], str]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body), head.decode("latin-1").lower()


def test_no_response_says_server(server: WorkerProcesses) -> None:
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as http:
        for path in ("/", "/posts", "/nowhere", "/health/ready", "/docs"):
            response = http.get(path)
            assert "server" not in response.headers, (path, response.headers)


def test_forwarded_for_from_loopback_is_not_believed_by_default(
    server: WorkerProcesses,
) -> None:
    """uvicorn believes X-Forwarded-For from 127.0.0.1 unless told not to: every made-up
    address would get a fresh budget and land in the access log."""
    remaining = []
    forgeries = ("198.51.100.1", "198.51.100.2", "not-an-ip", "<script>")
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as http:
        for number, forged in enumerate(forgeries):
            response = http.get(
                "/posts", headers={"X-Forwarded-For": forged, "X-Request-ID": f"xff-{number}"}
            )
            assert response.status_code == 200
            remaining.append(int(response.headers["X-RateLimit-Remaining"]))
    assert remaining == list(range(remaining[0], remaining[0] - 4, -1)), "one budget"
    request_ids = {f"xff-{number}" for number in range(len(forgeries))}
    logged = logged_clients(server, request_ids)
    assert {logged.get(request_id) for request_id in request_ids} == {"127.0.0.1"}, logged


def test_a_huge_header_is_refused_without_reading_it_all(server: WorkerProcesses) -> None:
    size = http_protocol.MAX_REQUEST_HEAD_BYTES
    request = b"GET /posts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b"a" * (8 * size)
    answer, _ = raw_exchange(server.port, request)  # no end of the head: refused on the way
    status, body, head = envelope(answer)
    assert status == 431 and body["error_code"] == "HEADERS_TOO_LARGE", answer[:300]
    assert "connection: close" in head
    # A head that is complete in one read but over the cap is refused too.
    whole = b"GET /posts HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * (size + 10) + b"\r\n\r\n"
    status, body, _ = envelope(raw_exchange(server.port, whole)[0])
    assert status == 431 and body["error_code"] == "HEADERS_TOO_LARGE"
    # Just under the cap is fine.
    fits = b"GET / HTTP/1.1\r\nHost: x\r\nX-Fits: " + b"c" * (size - 200) + b"\r\n"
    fits += b"Connection: close\r\n\r\n"
    assert raw_exchange(server.port, fits)[0].startswith(b"HTTP/1.1 200 ")
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as http:
        assert http.get("/").status_code == 200  # the worker is fine


def test_a_head_that_trickles_is_cut_off(server: WorkerProcesses) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /posts HTTP/1.1\r\nHost: x\r\n")
        answer = b""
        for _ in range(int(TIMEOUT * 2)):  # one header byte every half second
            try:
                sock.sendall(b"X")
            except OSError:
                break
            time.sleep(0.5)
            sock.setblocking(False)
            try:
                answer += sock.recv(65536)
            except BlockingIOError:
                pass
            finally:
                sock.setblocking(True)
            if answer:
                break
    elapsed = time.monotonic() - started
    status, body, _ = envelope(answer)
    assert status == 408 and body["error_code"] == "REQUEST_TIMEOUT", answer
    assert elapsed < 4, elapsed  # the 1 s deadline, not the trickle, decides
    # A connection that sends nothing at all is closed too.
    answer, elapsed = raw_exchange(server.port, b"")
    assert envelope(answer)[0] == 408 and elapsed < 4


def test_a_body_that_trickles_is_answered_408(server: WorkerProcesses) -> None:
    head = b"POST /auth/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    answer, elapsed = raw_exchange(server.port, head + b"Content-Length: 100\r\n\r\n{")
    status, body, headers = envelope(answer)
    assert status == 408 and body["error_code"] == "REQUEST_TIMEOUT", answer
    assert "connection: close" in headers
    assert elapsed < 4, elapsed
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as http:
        user = {"username": "slowpoke", "email": "slow@example.com", "password": "password123"}
        assert http.post("/auth/register", json=user).status_code == 201  # a normal body is fine


def test_a_forged_forwarded_for_behind_a_trusted_proxy_is_never_the_client(
    tmp_path: Path,
) -> None:
    """FORWARDED_ALLOW_IPS=127.0.0.1 (loopback plays nginx): an address in X-Forwarded-For is
    the client, something else is not; uvicorn, which reads the same variable, does not
    rewrite the client first."""
    env = {
        "DATABASE_URL": sqlite_database(tmp_path),
        "LOG_FORMAT": "json",
        "FORWARDED_ALLOW_IPS": "127.0.0.1",
    }
    with WorkerProcesses(env, tmp_path / "server.log", workers=1) as proxied:
        with httpx.Client(base_url=proxied.url, timeout=TIMEOUT) as http:
            for request_id, forwarded in (
                ("real", "198.51.100.7"),
                ("forged", "not-an-ip"),
                ("forged-left", "not-an-ip, 198.51.100.8"),
            ):
                response = http.get(
                    "/posts", headers={"X-Forwarded-For": forwarded, "X-Request-ID": request_id}
                )
                assert response.status_code == 200
        logged = logged_clients(proxied, {"real", "forged", "forged-left"})
    assert logged["real"] == "198.51.100.7"
    assert logged["forged"] == "127.0.0.1"
    assert logged["forged-left"] == "198.51.100.8"


def test_the_gunicorn_worker_has_the_same_settings() -> None:
    from uvicorn.config import Config

    worker = http_protocol.GunicornWorker
    config = Config("main:app", **worker.CONFIG_KWARGS)
    assert config.proxy_headers is False and config.server_header is False
    assert config.http is http_protocol.BoundedHttpToolsProtocol
    assert config.ws_max_size == 65536
