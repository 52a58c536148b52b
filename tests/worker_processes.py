"""The service as it runs in production: `uvicorn main:app --workers N` in a process group of its
own, for tests where processes matter (races across workers, faults, fan-out). Used as a context
manager; it waits until every worker has finished its start-up and stops the whole group after."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from managed_process import ManagedProcess

ROOT = Path(__file__).resolve().parent.parent
WORKER_SECRET = "worker-processes-secret-key-0123456789abcdef"
STARTUP_TIMEOUT = 90.0  # seconds; generous for a loaded CI machine
# What every start command passes (the Makefile's SERVER_FLAGS; test_hardening checks them all).
SERVER_FLAGS = (
    "--no-proxy-headers",
    "--no-server-header",
    *("--http", "http_protocol:BoundedHttpToolsProtocol"),
)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class WorkerProcesses(ManagedProcess):
    """`uvicorn main:app --workers N` on a free loopback port, started from an empty directory
    (no stray `.env`), with `env` on top of the test's environment; output goes to `log`."""

    def __init__(
        self,
        env: dict[str, str],
        log: Path,
        workers: int = 2,
        port: int | None = None,
        options: tuple[str, ...] = (),
    ) -> None:
        self.workers = workers
        self.options = options
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.log = log
        self.env = {
            **os.environ,
            "SECRET_KEY": WORKER_SECRET,
            "ENVIRONMENT": "test",
            "LOG_FORMAT": "text",
            "LOG_LEVEL": "INFO",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "uvicorn", "main:app", "--app-dir", str(ROOT)]
        command += ["--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--workers", str(self.workers), "--ws-max-size", "65536", *SERVER_FLAGS]
        command += self.options
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as output:
            self.process = subprocess.Popen(
                command,
                cwd=self.log.parent,
                env=self.env,
                stdout=output,
                stderr=output,
                start_new_session=True,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while self.log_text().count("Application startup complete") < self.workers:
            if self.process.poll() is not None:
                raise AssertionError(f"uvicorn exited:\n{self.log_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"uvicorn did not start:\n{self.log_text()}")
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM the group (graceful shutdown of every worker); SIGKILL if it hangs."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def worker_pids(self) -> set[int]:
        """The worker processes (the supervisor's spawned children, not its resource tracker)."""
        assert self.process is not None
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        pids = set()
        for pid in children.read_text().split():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in cmdline:
                pids.add(int(pid))
        return pids

    def pids_holding_connections(self) -> set[int]:
        """The pids of the processes holding established connections on the server's port."""
        output = subprocess.run(
            ["ss", "-tnpH", "state", "established", f"( sport = :{self.port} )"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        return {int(pid) for pid in re.findall(r"pid=(\d+)", output)}

    def connection_pids(self) -> dict[int, int]:
        """The pid holding the server end of each established connection, by the client's port."""
        output = subprocess.run(
            ["ss", "-tnpH", "state", "established", f"( sport = :{self.port} )"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        owners = {}
        for line in output.splitlines():
            # Recv-Q Send-Q Local:Port Peer:Port users:(("python",pid=...,fd=...))
            fields = line.split()
            pid = re.search(r"pid=(\d+)", line)
            if len(fields) >= 4 and pid is not None:
                owners[int(fields[3].rpartition(":")[2])] = int(pid.group(1))
        return owners
