"""The log format: JSON lines for machines, readable text for a person at a terminal when
LOG_FORMAT is unset; no terminal colour codes in JSON, no `[None]` request ids in text."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import time
from pathlib import Path

import pytest
from test_startup import clean_env, free_port, uvicorn_command

import logging_setup
from logging_setup import effective_log_format

# Start-up lines, then the critical line and the exit: quick, and no server to stop.
UNREACHABLE = {"DATABASE_URL": "postgresql://root@127.0.0.1:1/x"}


def test_unset_log_format_follows_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logging_setup.sys.stderr, "isatty", lambda: True)
    assert effective_log_format(None) == "text"
    assert effective_log_format("json") == "json"
    monkeypatch.setattr(logging_setup.sys.stderr, "isatty", lambda: False)
    assert effective_log_format(None) == "json"
    assert effective_log_format("text") == "text"


def server_output(env: dict[str, str], cwd: Path, terminal: bool) -> str:
    """What `uvicorn main:app` writes to stderr (a pseudo-terminal, or a pipe) until it exits."""
    command = uvicorn_command(free_port())
    if not terminal:
        result = subprocess.run(
            command, env=env, cwd=cwd, capture_output=True, text=True, timeout=60
        )
        return result.stderr
    controller, terminal_end = pty.openpty()
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=terminal_end, stderr=terminal_end)
    os.close(terminal_end)
    chunks = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the other end closed: the process exited
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(controller)
        process.wait(timeout=30)
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_a_terminal_gets_readable_text(tmp_path: Path) -> None:
    env = clean_env(**UNREACHABLE)
    del env["LOG_FORMAT"]
    output = server_output(env, tmp_path, terminal=True)
    lines = [line for line in output.splitlines() if " uvicorn.error " in line or " blog " in line]
    assert any("Waiting for application startup." in line for line in lines), output
    assert any("cannot reach the database" in line for line in lines), output
    assert not any(line.lstrip().startswith("{") for line in lines), output
    assert "[None]" not in output


@pytest.mark.slow
def test_a_pipe_gets_json_without_colour_codes(tmp_path: Path) -> None:
    env = clean_env(**UNREACHABLE)
    del env["LOG_FORMAT"]
    output = server_output(env, tmp_path, terminal=False)
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    messages = [record["message"] for record in records]
    assert any(message.startswith("Started server process") for message in messages), output
    assert "\x1b" not in output and "\\u001b" not in output
    assert all("color_message" not in record for record in records)
    assert all(record["request_id"] is None for record in records)  # none outside a request


def test_text_lines_carry_the_request_id_only_inside_a_request() -> None:
    import logging

    from request_id import request_id_var

    handler = logging_setup.make_handler("text")
    record = logging.LogRecord("blog", logging.INFO, __file__, 1, "hello", None, None)
    handler.filter(record)
    assert handler.format(record).endswith(" blog hello")
    token = request_id_var.set("abc-1")
    try:
        handler.filter(record)
    finally:
        request_id_var.reset(token)
    assert handler.format(record).endswith(" blog [abc-1] hello")
