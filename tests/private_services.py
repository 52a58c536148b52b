"""Throw-away service processes for tests that stop and restart them (the shared ones configured
by TEST_DATABASE_URL and TEST_REDIS_URL are never touched). The `private_redis` and
`private_postgres_server` fixtures in conftest hand them out."""

from __future__ import annotations

import asyncio
import concurrent.futures
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Literal

import asyncpg
import redis
from managed_process import ManagedProcess
from sqlalchemy.engine import make_url


class PrivateRedis(ManagedProcess):
    """A throw-away redis-server on a port of its own, for stopping and starting at will.

    No automatic persistence; `--dir` is the test's own directory, so an explicit SAVE (through
    `client()`) is what a restart on the same port comes back with, and otherwise it comes back
    empty."""

    def __init__(self, binary: str, port: int, directory: Path) -> None:
        self.binary = binary
        self.port = port
        self.directory = directory
        self.url = f"redis://127.0.0.1:{port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.client().ping():
                    return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        """Kill it outright: nothing is saved on the way down."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=2)


def postgres_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl (`pg_config --bindir`, else the newest
    /usr/lib/postgresql/*/bin), or None when PostgreSQL's server binaries are not installed."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if result.returncode == 0:
            candidates.append(Path(result.stdout.strip()))
    versioned = [Path(path) for path in glob.glob("/usr/lib/postgresql/*/bin")]
    candidates += sorted(versioned, key=lambda path: _version(path.parent.name), reverse=True)
    for candidate in candidates:
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    return None


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


PostgresStopMode = Literal["smart", "fast", "immediate"]


class PrivatePostgres:
    """A throw-away PostgreSQL cluster on a port of its own, for crashing and restarting at will.

    Its data directory and unix socket live in a fresh temporary directory owned by the `postgres`
    user (initdb refuses to run as root, so as root every server command runs as `postgres`), which
    is removed on exit. Trust authentication, loopback only; `url` is the `blog` database as the
    `postgres` superuser. fsync is off: an immediate stop kills the server processes but leaves
    what they wrote to the kernel, so every commit that was acknowledged survives a restart."""

    DATABASE = "blog"
    USER = "postgres"

    def __init__(self, bindir: Path, port: int) -> None:
        self.bindir = bindir
        self.port = port
        self.url = f"postgresql://{self.USER}@127.0.0.1:{port}/{self.DATABASE}"
        self.directory: Path | None = None

    @property
    def data_directory(self) -> Path:
        assert self.directory is not None, "not created yet"
        return self.directory / "data"

    @property
    def log_file(self) -> Path:
        assert self.directory is not None, "not created yet"
        return self.directory / "postgres.log"

    def create(self) -> None:
        """initdb a new cluster and create the `blog` database (the server is left running)."""
        self.directory = Path(tempfile.mkdtemp(prefix="private-postgres-"))
        if os.geteuid() == 0:
            account = pwd.getpwnam(self.USER)
            os.chown(self.directory, account.pw_uid, account.pw_gid)
        self._run(
            "initdb",
            "--pgdata",
            str(self.data_directory),
            "--username",
            self.USER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--no-sync",
        )
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.directory}'",
            "fsync": "off",
            "full_page_writes": "off",
            "shared_buffers": "16MB",
            "max_connections": "60",
        }
        with (self.data_directory / "postgresql.conf").open("a") as config:
            config.writelines(f"{name} = {value}\n" for name, value in settings.items())
        self.start()
        self._run(
            "createdb", "--host", str(self.directory), "--port", str(self.port), self.DATABASE
        )

    def start(self) -> None:
        """Start the server on its data directory and port; returns once it accepts connections."""
        self._run(
            "pg_ctl",
            "start",
            "--pgdata",
            str(self.data_directory),
            "--log",
            str(self.log_file),
            "--wait",
            "--timeout",
            "30",
        )

    def stop(self, mode: PostgresStopMode = "immediate") -> None:
        """Stop the server; `immediate` is a crash (no checkpoint, recovery on the next start)."""
        if self.is_running():
            self._run("pg_ctl", "stop", "--pgdata", str(self.data_directory), "--mode", mode)

    def is_running(self) -> bool:
        return self.directory is not None and (self.data_directory / "postmaster.pid").exists()

    def remove(self) -> None:
        """Stop the server if it runs and delete the cluster."""
        try:
            self.stop()
        finally:
            if self.directory is not None:
                shutil.rmtree(self.directory, ignore_errors=True)
                self.directory = None

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bindir / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", self.USER, "--", *command]
        result = subprocess.run(
            command,
            cwd=self.directory,  # readable by the postgres user, unlike the test's own cwd
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            log = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
            raise RuntimeError(
                f"{program} {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}{log}"
            )

    def __enter__(self) -> PrivatePostgres:
        try:
            self.create()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.remove()


@contextmanager
def scratch_database(server_url: str, prefix: str) -> Iterator[str]:
    """An empty database of its own on `server_url`'s PostgreSQL server, dropped afterwards
    (also while clients are still connected); yields its URL."""
    url = make_url(server_url)
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"

    def admin(statement: str) -> None:
        async def run() -> None:
            connection = await asyncpg.connect(
                url.set(drivername="postgresql").render_as_string(hide_password=False)
            )
            try:
                await connection.execute(statement)
            finally:
                await connection.close()

        # Its own thread: the caller may be inside a running event loop (an async fixture).
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(asyncio.run, run()).result()

    admin(f'CREATE DATABASE "{name}"')
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
