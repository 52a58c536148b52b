"""The deploy files, checked without Docker (there is no engine here): docker-compose.yml parsed
as YAML, deploy/pgbouncer.ini and deploy/nginx.conf read (nginx also checks the latter with
`nginx -t`), the Procfile's command run, .dockerignore matched against what the image needs."""

from __future__ import annotations

import configparser
import fnmatch
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REQUIRE_SERVICES, ROOT
from loopback import binary, rendered_nginx_conf

COMPOSE = ROOT / "docker-compose.yml"
PGBOUNCER_INI = ROOT / "deploy" / "pgbouncer.ini"
POSTGRES_MAX_CONNECTIONS = 100  # the postgres image's default


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def default(value: str) -> str:
    """A compose value with its `${NAME:-default}` interpolations replaced by the defaults."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))


def test_compose_runs_nginx_replicas_pgbouncer_postgres_and_redis() -> None:
    services = compose()["services"]
    assert {"nginx", "api", "migrate", "pgbouncer", "postgres", "redis"} <= set(services)
    api = services["api"]
    assert int(default(api["deploy"]["replicas"])) >= 2
    assert "ports" not in api  # reachable through nginx only
    environment = api["environment"]
    assert default(environment["DATABASE_URL"]).startswith("postgresql://blog:blog@pgbouncer:")
    assert environment["DATABASE_POOLER"] == "pgbouncer"
    assert default(environment["ENVIRONMENT"]) == "production"
    # Migrations go straight to PostgreSQL, once, before the replicas start.
    assert "@postgres:5432/" in services["migrate"]["environment"]["DATABASE_URL"]
    assert api["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    # nginx runs the shipped config, and is the only proxy whose X-Forwarded-For is believed.
    nginx = services["nginx"]
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]
    assert environment["FORWARDED_ALLOW_IPS"] == nginx["networks"]["backend"]["ipv4_address"]
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), volume


def test_the_secret_key_is_kept_not_required_by_every_command() -> None:
    """`${SECRET_KEY:?}` failed every later command (logs, exec, down) and a key made per `up`
    signed every token out: the key comes from .env, which may be absent for those commands."""
    text = COMPOSE.read_text()
    assert not re.search(r"\$\{[A-Z_]+:\?", text)
    api = compose()["services"]["api"]
    assert "SECRET_KEY" not in api["environment"]
    assert api["env_file"] == [{"path": ".env", "required": False}]


def test_shutdown_fits_in_the_stop_timeout() -> None:
    api = compose()["services"]["api"]
    grace = int(default(api["environment"]["GRACEFUL_SHUTDOWN_SECONDS"]))
    stop = int(api["stop_grace_period"].removesuffix("s"))
    assert grace < stop


def test_pools_fit_pgbouncer_and_pgbouncer_fits_postgres() -> None:
    """replicas x workers x (pool + overflow) client connections <= PgBouncer's max_client_conn,
    and PgBouncer's server connections <= PostgreSQL's max_connections."""
    ini = configparser.ConfigParser()
    ini.read(PGBOUNCER_INI)
    bouncer = ini["pgbouncer"]
    assert bouncer["pool_mode"] == "transaction"
    api = compose()["services"]["api"]
    environment = api["environment"]
    clients = (
        int(default(api["deploy"]["replicas"]))
        * int(default(environment["WEB_CONCURRENCY"]))
        * (int(default(environment["DB_POOL_SIZE"])) + int(default(environment["DB_MAX_OVERFLOW"])))
    )
    assert clients <= int(bouncer["max_client_conn"])
    servers = int(bouncer["default_pool_size"]) + int(bouncer["reserve_pool_size"])
    assert servers < POSTGRES_MAX_CONNECTIONS
    assert "blog" in ini["databases"] and "host=postgres" in ini["databases"]["blog"]


def test_nginx_accepts_the_shipped_config(tmp_path: Path) -> None:
    program = binary("nginx")
    if program is None:
        if REQUIRE_SERVICES:
            pytest.fail("TEST_REQUIRE_SERVICES=1 but nginx is not installed")
        pytest.skip("nginx is not installed")
    config = tmp_path / "nginx.conf"
    config.write_text(rendered_nginx_conf(8080, ["127.0.0.1:9001", "127.0.0.1:9002"], tmp_path))
    check = subprocess.run(
        [program, "-t", "-p", str(tmp_path), "-c", str(config), "-g", f"pid {tmp_path}/pid;"],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())


@pytest.mark.parametrize("process", ["web", "release"])
def test_the_procfile_runs_in_production(process: str, tmp_path: Path) -> None:
    """With ENVIRONMENT unset, the Procfile's commands run with ENVIRONMENT=production: without
    a SECRET_KEY they refuse to start."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("ENVIRONMENT", "SECRET_KEY", "DATABASE_URL")
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path}/blog.db"
    env["PORT"] = "0"
    result = subprocess.run(
        ["sh", "-c", procfile()[process]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode != 0
    assert "ENVIRONMENT=production needs a SECRET_KEY" in result.stdout + result.stderr


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize(
    "needed",
    ["main.py", "docker/start.sh", "requirements.txt", "alembic/env.py", "static/docs", "routes"],
)
def test_the_image_gets_what_it_runs(needed: str) -> None:
    excluded = [
        pattern
        for pattern in dockerignore()
        if not pattern.startswith("!") and fnmatch.fnmatch(needed, pattern.removeprefix("**/"))
    ]
    assert excluded == []


def test_dockerignore_lists_only_what_exists_or_is_made() -> None:
    """Each entry names something a checkout or a run makes (a stale entry like `run` hides
    nothing and misleads)."""
    made = {".venv", "venv", ".env", ".secret_key", "htmlcov", ".coverage", "bench/results"}
    for pattern in dockerignore():
        if pattern.startswith(("!", "*", "**")) or any(c in pattern for c in "*?["):
            continue
        assert pattern in made or (ROOT / pattern).exists() or pattern.startswith("."), pattern
