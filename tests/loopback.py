"""The parts of a several-machine deployment as private loopback processes: PgBouncer in
transaction mode in front of a PostgreSQL server, and nginx in front of instances of the service
(each `uvicorn --workers N` in a process group of its own). Config files are generated into a
temporary directory; nothing of the system services is used or touched. Shared by the PgBouncer
tests and `make scale-test` (tests/test_scale.py)."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from managed_process import ManagedProcess
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
START_TIMEOUT = 30.0


def binary(name: str) -> str | None:
    """The program from PATH or the sbin directories Debian installs daemons into."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    import socket

    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode}:\n{log.read_text()}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}:\n{log.read_text()}")


class PrivatePgBouncer(ManagedProcess):
    """PgBouncer (`pool_mode = transaction`) on `port`, in front of `server_url`'s PostgreSQL.

    `pool_size` server connections per database and user are shared by every client connection,
    so consecutive transactions of one client run on whichever server connection is free. As root
    PgBouncer refuses to run, so it runs as `postgres` (`-u`)."""

    RUN_AS = "postgres"

    def __init__(self, server_url: str, port: int, pool_size: int = 4) -> None:
        self.server = make_url(server_url)
        self.port = port
        self.pool_size = pool_size
        self.directory = Path(tempfile.mkdtemp(prefix="private-pgbouncer-"))
        self.log = self.directory / "pgbouncer.log"
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, database: str | None = None) -> str:
        """The URL of `database` (default: the server URL's) through PgBouncer."""
        return self.server.set(
            host="127.0.0.1", port=self.port, database=database or self.server.database
        ).render_as_string(hide_password=False)

    def start(self) -> None:
        program = binary("pgbouncer")
        if program is None:
            raise RuntimeError("pgbouncer is not installed")
        user = self.server.username or "postgres"
        (self.directory / "users.txt").write_text(f'"{user}" ""\n')
        settings = {
            "listen_addr": "127.0.0.1",
            "listen_port": str(self.port),
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": str(self.directory / "users.txt"),
            "pool_mode": "transaction",
            "default_pool_size": str(self.pool_size),
            "min_pool_size": "0",
            "reserve_pool_size": "0",
            "max_client_conn": "1000",
            "max_db_connections": str(self.pool_size),
            "server_reset_query": "",
            "ignore_startup_parameters": "extra_float_digits",
            "log_connections": "0",
            "log_disconnections": "0",
        }
        config = self.directory / "pgbouncer.ini"
        databases = f"* = host={self.server.host or '127.0.0.1'} port={self.server.port or 5432}\n"
        config.write_text(
            "[databases]\n"
            + databases
            + "[pgbouncer]\n"
            + "".join(f"{name} = {value}\n" for name, value in settings.items())
        )
        command = [program, str(config)]
        if os.geteuid() == 0:
            account = pwd.getpwnam(self.RUN_AS)
            os.chown(self.directory, account.pw_uid, account.pw_gid)
            for path in self.directory.iterdir():
                os.chown(path, account.pw_uid, account.pw_gid)
            command[1:1] = ["-u", self.RUN_AS]
        with self.log.open("wb") as output:
            self.process = subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_for_port(self.port, self.process, self.log)

    def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGINT)  # PgBouncer's immediate shutdown
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            self.process = None
        shutil.rmtree(self.directory, ignore_errors=True)


NGINX_ADDRESS = "127.0.0.2"  # nginx connects to the instances from here (FORWARDED_ALLOW_IPS)


def rendered_nginx_conf(listen_port: int, upstreams: list[str], directory: Path) -> str:
    """deploy/nginx.conf as shipped, pointed at loopback: listening on `listen_port`, the
    instances in `upstreams` (`127.0.0.1:PORT`, optionally followed by ` down`), logs and temp
    files in `directory`, and connecting to the instances from NGINX_ADDRESS, an address of its
    own (on loopback everyone else is 127.0.0.1 too)."""
    text = NGINX_CONF.read_text()
    servers = "".join(f"        server {upstream};\n" for upstream in upstreams)
    text, count = re.subn(
        r"(# instances: begin\n).*?(\s*# instances: end)",
        lambda match: match.group(1) + servers.rstrip("\n") + match.group(2),
        text,
        flags=re.S,
    )
    assert count == 1, "deploy/nginx.conf lost its instance markers"
    text, count = re.subn(
        r"listen 80;", f"listen 127.0.0.1:{listen_port};\n        proxy_bind {NGINX_ADDRESS};", text
    )
    assert count == 1, "deploy/nginx.conf lost its `listen 80;`"
    text = text.replace("/dev/stdout", str(directory / "access.log"))
    text = text.replace("/dev/stderr", str(directory / "error.log"))
    temp_paths = "".join(
        f"    {name}_temp_path {directory / name};\n"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    text, count = re.subn(r"\nhttp \{\n", "\nhttp {\n" + temp_paths, text)
    assert count == 1
    return text


class PrivateNginx(ManagedProcess):
    """nginx in the foreground (`daemon off`) with deploy/nginx.conf rendered for loopback;
    `set_upstreams` rewrites the instance list and reloads (old workers finish their requests)."""

    def __init__(self, port: int, upstreams: list[str]) -> None:
        self.port = port
        self.upstreams = upstreams
        self.directory = Path(tempfile.mkdtemp(prefix="private-nginx-"))
        self.config = self.directory / "nginx.conf"
        self.log = self.directory / "nginx.out"
        self.access_log = self.directory / "access.log"
        self.error_log = self.directory / "error.log"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        program = binary("nginx")
        if program is None:
            raise RuntimeError("nginx is not installed")
        directives = f"daemon off; pid {self.directory / 'nginx.pid'};"
        return [program, "-p", str(self.directory), "-c", str(self.config), "-g", directives]

    def write_config(self) -> None:
        self.config.write_text(rendered_nginx_conf(self.port, self.upstreams, self.directory))
        if os.geteuid() == 0:  # the workers run as an unprivileged user and write temp files
            os.chmod(self.directory, 0o755)
        check = subprocess.run([*self.command(), "-t"], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t failed:\n{check.stderr}")

    def start(self) -> None:
        self.write_config()
        with self.log.open("wb") as output:
            self.process = subprocess.Popen(
                self.command(), stdout=output, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_for_port(self.port, self.process, self.log)

    def set_upstreams(self, upstreams: list[str], wait: float = 5.0) -> None:
        """Rewrite the instance list and reload; returns once the old workers have exited
        (they close their idle keep-alive connections to the instances at once and finish the
        requests they proxy), or after `wait` seconds when WebSockets keep one alive."""
        assert self.process is not None
        old_workers = self.worker_pids()
        self.upstreams = upstreams
        self.write_config()
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            current = self.worker_pids()
            if current and not current & old_workers:
                return
            time.sleep(0.05)

    def worker_pids(self) -> set[int]:
        assert self.process is not None
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return {int(pid) for pid in children.read_text().split()}
        except OSError:
            return set()

    def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGQUIT)  # graceful
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
            self.process = None
        shutil.rmtree(self.directory, ignore_errors=True)
