"""What bench/run.py (`make bench`) and bench/soak.py (`make soak`) share.

Paths, the error that ends a run, PostgreSQL and Redis helpers, the service's production
environment, starting and stopping server processes, reading /proc, and report lines.
Both scripts run as `python bench/<name>.py`, so bench/ is on sys.path and `import common` works.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

import asyncpg

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
HOST = "127.0.0.1"
# The flags of every start command (the Makefile's SERVER_FLAGS).
SERVER_FLAGS = (
    "--no-proxy-headers",
    "--no-server-header",
    *("--http", "http_protocol:BoundedHttpToolsProtocol"),
)


class BenchError(Exception):
    """A failure that ends the run: printed as one line, exit code 1."""


def log(message: str = "") -> None:
    """A progress line, flushed at once (the output may be a pipe)."""
    print(message, flush=True)


def argument_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """A command line parser whose help is the script's docstring, line breaks kept."""
    return argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawTextHelpFormatter
    )


def run_script(run: Callable[[], int], clean_up: Callable[[], None]) -> int:
    """`run()`'s exit code, 1 on a BenchError, 130 on Ctrl-C; `clean_up()` in any case."""
    try:
        return run()
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    finally:
        clean_up()


# --- PostgreSQL and Redis ------------------------------------------------------------------------


def run_sql(dsn: str, work: Callable[[asyncpg.Connection], Any]) -> Any:
    """`await work(connection)` on a connection of its own to `dsn`, closed afterwards."""

    async def go() -> Any:
        connection = await asyncpg.connect(dsn, timeout=10)
        try:
            return await work(connection)
        finally:
            await connection.close()

    return asyncio.run(go())


async def drop_database(connection: asyncpg.Connection, name: str) -> None:
    """Drop the database `name` if it exists, its open connections too."""
    await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def recreate_database(connection: asyncpg.Connection, name: str) -> None:
    """Drop the database `name` if it exists and create it empty."""
    await drop_database(connection, name)
    await connection.execute(f'CREATE DATABASE "{name}"')


def flush_redis(url: str) -> str:
    """FLUSHDB on the Redis database at `url`; the server's version."""
    import redis  # the service's own dependency

    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.flushdb()
        version: str = client.info("server").get("redis_version", "?")
        return version
    finally:
        client.close()


# --- the service's processes ---------------------------------------------------------------------


def production_env(
    *, dsn: str, redis_url: str, secret: str, rate_limit: str, login_limit: str, cache_ttl: int
) -> dict[str, str]:
    """This process's environment without PYTHONPATH, with the service's production settings."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(
        DATABASE_URL=dsn,
        REDIS_URL=redis_url,
        ENVIRONMENT="production",
        SECRET_KEY=secret,
        RATE_LIMIT_ENABLED="true",
        RATE_LIMIT_READ=rate_limit,
        RATE_LIMIT_WRITE=rate_limit,
        RATE_LIMIT_LOGIN=login_limit,
        LOG_FORMAT="json",
        LOG_LEVEL="INFO",
        CACHE_TTL_SECONDS=str(cache_ttl),
        ACCESS_TOKEN_EXPIRE_MINUTES="240",
        SMTP_HOST="",
        NOTIFY_EMAIL="",
        CORS_ORIGINS="",
        # As a deployment sets them: the Host check runs; no proxy (the peer is the client).
        ALLOWED_HOSTS="127.0.0.1,localhost",
        FORWARDED_ALLOW_IPS="",
    )
    return env


def manage(arguments: Sequence[str], env: dict[str, str], timeout: float) -> None:
    """`python manage.py <arguments>` in the repository; a BenchError when it fails."""
    result = subprocess.run(
        [sys.executable, "manage.py", *arguments], cwd=ROOT, env=env, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise BenchError(f"manage.py {arguments[0]} failed (exit {result.returncode})")


def free_port() -> int:
    """A TCP port on HOST that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def start_in_session(
    command: list[str], env: dict[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    """Start `command` in a session of its own, its output appended to `log_path` (emptied)."""
    log_path.write_bytes(b"")
    with log_path.open("ab") as output:  # O_APPEND: the log may be emptied while it runs
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            start_new_session=True,
        )


def stop_process_group(process: subprocess.Popen[bytes], grace: float, kill_wait: float) -> None:
    """SIGTERM the process's group (a graceful shutdown); SIGKILL it after `grace` seconds."""
    if process.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=kill_wait)


def log_text(path: Path) -> str:
    """The text of a log file (empty when it cannot be read)."""
    with suppress(OSError):
        return path.read_text(errors="replace")
    return ""


def log_tail(path: Path, lines: int) -> str:
    """The last `lines` lines of a log file."""
    return "\n".join(log_text(path).splitlines()[-lines:])


# --- /proc ---------------------------------------------------------------------------------------


def child_pids(pid: int) -> list[int]:
    """The child processes of a process (empty once it is gone)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    with suppress(OSError):
        return [int(child) for child in children.read_text().split()]
    return []


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS, VmHWM, RssAnon and RssFile of a process, in MiB (empty once it is gone)."""
    found = {}
    with suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                found[name] = int(value.split()[0]) / 1024
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (NaN once it is gone)."""
    with suppress(OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # after `(comm)`
    return float("nan")


# --- the report ----------------------------------------------------------------------------------


def machine_line(pg_version: object, redis_version: object, *tools: str) -> str:
    """The report's `- machine:` line: CPUs, Python, PostgreSQL, Redis, `tools`, git revision."""
    python = f"Python {platform.python_version()}"
    versions = ", ".join([python, f"PostgreSQL {pg_version}", f"Redis {redis_version}", *tools])
    return f"- machine: {os.cpu_count()} CPUs ({cpu_model()}), {versions}; git {git_revision()}"


def load_line(start: float, end: float) -> str:
    """The report's `- load average` line, with a warning when other work competed for the CPUs."""
    warning = busy_warning(start, end)
    return f"- load average (1 min) at start {start:.2f}, at end {end:.2f}{warning}"


def busy_warning(*loads: float) -> str:
    """A warning to append when a load average was above the number of CPUs, else nothing."""
    cpus = os.cpu_count() or 1
    if max(loads) > cpus:
        return (
            f": **more runnable work than the {cpus} CPUs: other processes were competing, "
            "the figures are lower and noisier than on an idle machine**"
        )
    return ""


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo."""
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def git_revision() -> str:
    """`git describe --always --dirty` of the repository."""
    result = subprocess.run(
        ["git", "describe", "--always", "--dirty"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return result.stdout.strip() or "unknown"
