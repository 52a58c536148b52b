"""`make scale-test`: the service on several machines, built from the real parts on loopback.

PostgreSQL (TEST_DATABASE_URL) behind a private PgBouncer in transaction mode, Redis
(TEST_REDIS_URL), two instances of two workers each (`uvicorn --workers 2`, each in a process group
of its own with its own INSTANCE_ID and metrics directory, DATABASE_POOLER=pgbouncer) and a private
nginx running deploy/nginx.conf in front of them. Then the guarantees that hold across workers
must hold across instances, and a rolling restart under load must cost the clients nothing: no 5xx,
no acknowledged write lost. Runs only with SCALE_TEST=1 (the make target sets it).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
import websockets
from conftest import (
    PASSWORD,
    REQUIRE_SERVICES,
    ROOT,
    TEST_REDIS_URL,
    flush_redis,
    free_port,
    truncate_postgres,
)
from loopback import NGINX_ADDRESS, PrivateNginx, PrivatePgBouncer, binary
from worker_processes import WorkerProcesses

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("SCALE_TEST") != "1", reason="make scale-test runs it"),
]

WORKERS = 2
INSTANCES = ("api-1", "api-2")
POOL_PER_WORKER = 3  # 2 instances x 2 workers x 3 = 12 client connections to PgBouncer
PGBOUNCER_POOL = 8  # server connections to PostgreSQL
GRACE_SECONDS = 15
LOAD_CLIENTS = 20
LOGIN_LIMIT = 10


class Instance:
    """One instance: `uvicorn --workers 2` on a port of its own, restartable on that port."""

    def __init__(self, name: str, env: dict[str, str], directory: Path) -> None:
        self.name = name
        self.port = free_port()
        self.directory = directory
        self.env = {
            **env,
            "INSTANCE_ID": name,
            "PROMETHEUS_MULTIPROC_DIR": str(directory / "metrics"),
        }
        self.starts = 0
        self.server: WorkerProcesses | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def upstream(self) -> str:
        return f"127.0.0.1:{self.port} max_fails=1 fail_timeout=5s"

    def start(self) -> None:
        self.starts += 1
        metrics = self.directory / "metrics"
        metrics.mkdir(parents=True, exist_ok=True)
        for stale in metrics.iterdir():  # the prometheus_client convention: empty at start
            stale.unlink()
        self.server = WorkerProcesses(
            self.env,
            self.directory / f"server-{self.starts}.log",
            workers=WORKERS,
            port=self.port,
            options=("--timeout-graceful-shutdown", str(GRACE_SECONDS)),
        )
        self.server.start()

    def stop_gracefully(self) -> int:
        """SIGTERM to the supervisor, as `docker stop` sends it; its exit status."""
        assert self.server is not None and self.server.process is not None
        self.server.process.send_signal(signal.SIGTERM)
        returncode = self.server.process.wait(timeout=GRACE_SECONDS + 30)
        self.server.process = None
        return returncode

    def log_text(self) -> str:
        return "".join(
            path.read_text(errors="replace") for path in sorted(self.directory.glob("server-*"))
        )

    def kill(self) -> None:
        if self.server is not None:
            self.server.stop()


@dataclass
class Deployment:
    nginx: PrivateNginx
    instances: list[Instance]
    database_url: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.nginx.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.nginx.port}"

    def upstreams(self, down: Instance | None = None) -> list[str]:
        return [
            instance.upstream + (" down" if instance is down else "") for instance in self.instances
        ]


def need_programs() -> None:
    for program in ("nginx", "pgbouncer"):
        if binary(program) is None:
            if REQUIRE_SERVICES:
                pytest.fail(f"TEST_REQUIRE_SERVICES=1 but {program} is not installed")
            pytest.skip(f"{program} is not installed")


@pytest.fixture(scope="module")
def deployment(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    need_programs()
    assert TEST_REDIS_URL is not None
    asyncio.run(truncate_postgres(postgres_url))
    asyncio.run(flush_redis(TEST_REDIS_URL))
    directory = tmp_path_factory.mktemp("scale")
    with PrivatePgBouncer(postgres_url, free_port(), PGBOUNCER_POOL) as pgbouncer:
        env = {
            "DATABASE_URL": pgbouncer.url(),
            "DATABASE_POOLER": "pgbouncer",
            "DB_POOL_SIZE": str(POOL_PER_WORKER),
            "DB_MAX_OVERFLOW": "0",
            "REDIS_URL": TEST_REDIS_URL,
            "FORWARDED_ALLOW_IPS": NGINX_ADDRESS,
            "RATE_LIMIT_READ": "100000/minute",
            "RATE_LIMIT_WRITE": "100000/minute",
            "RATE_LIMIT_LOGIN": f"{LOGIN_LIMIT}/minute",
            "LOG_FORMAT": "json",
            "SMTP_HOST": "",
        }
        instances = [Instance(name, env, directory / name) for name in INSTANCES]
        try:
            for instance in instances:
                instance.start()
            upstreams = [instance.upstream for instance in instances]
            with PrivateNginx(free_port(), upstreams) as nginx:
                yield Deployment(nginx, instances, postgres_url)
        finally:
            for instance in instances:
                instance.kill()


def client_from(address: str, base_url: str) -> httpx.AsyncClient:
    """A client whose connections come from `address` (any 127.x.y.z is on loopback), so that
    nginx sees clients apart."""
    transport = httpx.AsyncHTTPTransport(local_address=address, retries=0)
    return httpx.AsyncClient(transport=transport, base_url=base_url, timeout=30)


async def sign_up(client: httpx.AsyncClient, username: str) -> dict[str, str]:
    account = {"username": username, "email": f"{username}@example.com", "password": PASSWORD}
    registered = await client.post("/auth/register", json=account)
    assert registered.status_code == 201, registered.text
    token = await client.post("/auth/login", data={"username": username, "password": PASSWORD})
    assert token.status_code == 200, token.text
    return {"Authorization": f"Bearer {token.json()['access_token']}"}


# --- the contract's cross-worker guarantees, across instances -------------------------------------


async def test_guarantees_hold_across_instances(deployment: Deployment) -> None:
    one, two = deployment.instances
    async with (
        client_from("127.0.0.3", deployment.url) as edge,
        client_from("127.0.0.3", one.url) as first,
        client_from("127.0.0.3", two.url) as second,
    ):
        headers = await sign_up(edge, "carol")
        created = await first.post(
            "/posts", json={"title": "Shared", "content": "v1", "published": True}, headers=headers
        )
        assert created.status_code == 201
        post_id = created.json()["id"]

        # A read right after a write on another instance is fresh (the cache is shared).
        assert (await second.get(f"/posts/{post_id}")).json()["content"] == "v1"
        patched = await first.patch(f"/posts/{post_id}", json={"content": "v2"}, headers=headers)
        assert patched.status_code == 200
        assert (await second.get(f"/posts/{post_id}")).json()["content"] == "v2"

        # Live events reach sockets on every instance, and through nginx.
        urls = [
            f"ws://127.0.0.1:{one.port}/ws/posts/{post_id}",
            f"ws://127.0.0.1:{two.port}/ws/posts/{post_id}",
            f"{deployment.ws_url}/ws/posts/{post_id}",
        ]
        sockets = [await websockets.connect(url) for url in urls]
        try:
            await asyncio.sleep(0.3)
            assert (
                await second.patch(f"/posts/{post_id}", json={"content": "v3"}, headers=headers)
            ).status_code == 200
            for live in sockets:
                event = json.loads(await asyncio.wait_for(live.recv(), 5))
                assert event["type"] == "post_updated" and event["post"]["content"] == "v3"
        finally:
            for live in sockets:
                await live.close()

        # An Idempotency-Key retried on another instance replays.
        keyed = {**headers, "Idempotency-Key": "scale-key-1"}
        body = {"title": "Keyed", "content": "once"}
        original = await first.post("/posts", json=body, headers=keyed)
        replay = await second.post("/posts", json=body, headers=keyed)
        assert original.status_code == replay.status_code == 201
        assert replay.headers["Idempotent-Replayed"] == "true"
        assert replay.json() == original.json()

        # If-Match races across instances: one winner.
        etag = (await first.get(f"/posts/{post_id}")).headers["ETag"]
        races = await asyncio.gather(
            *(
                (first, second)[index % 2].patch(
                    f"/posts/{post_id}",
                    json={"title": f"Winner {index}"},
                    headers={**headers, "If-Match": etag},
                )
                for index in range(8)
            )
        )
        assert sorted(response.status_code for response in races) == [200] + [412] * 7

        # Request ids pass through nginx both ways; every log line names its instance.
        echoed = await edge.get(f"/posts/{post_id}", headers={"X-Request-ID": "scale-rid-1"})
        assert echoed.headers["X-Request-ID"] == "scale-rid-1"
        minted = (await edge.get("/posts")).headers["X-Request-ID"]
        assert re.fullmatch(r"[0-9a-f]{32}", minted)
        await asyncio.sleep(0.3)
        assert f"rid={minted}" in deployment.nginx.access_log.read_text()
        lines = [json.loads(line) for line in one.log_text().splitlines() if line.startswith("{")]
        assert lines and {line["instance"] for line in lines} == {"api-1"}

        # X-Forwarded-For is believed from nginx only: through nginx the client is 127.0.0.3
        # whatever it claims; straight to an instance a claim is ignored.
        spoof = {"X-Forwarded-For": "203.0.113.9", "X-Request-ID": "scale-xff-edge"}
        await edge.get("/", headers=spoof)
        await first.get("/", headers={**spoof, "X-Request-ID": "scale-xff-direct"})
        await asyncio.sleep(0.3)
        logs = one.log_text() + two.log_text()
        for request_id in ("scale-xff-edge", "scale-xff-direct"):
            [access] = [
                json.loads(line)
                for line in logs.splitlines()
                if f'"request_id":"{request_id}"' in line and '"blog.access"' in line
            ]
            assert access["client_ip"] == "127.0.0.3"
        assert (await edge.get("/metrics")).status_code == 404  # scraped per instance

    # One rate limit across all instances: bad logins from one address, through nginx (which
    # spreads them over both instances), are limited after LOGIN_LIMIT in all (carol's sign-up
    # counted two).
    async with client_from("127.0.0.4", deployment.url) as other:
        statuses = [
            (
                await other.post("/auth/login", data={"username": "carol", "password": "wrong-1"})
            ).status_code
            for _ in range(LOGIN_LIMIT + 2)
        ]
        assert statuses[:LOGIN_LIMIT] == [401] * LOGIN_LIMIT
        assert statuses[LOGIN_LIMIT:] == [429, 429]
        upstreams = Counter(
            match.group(1)
            for match in re.finditer(
                r"POST /auth/login .* upstream=(\S+)", deployment.nginx.access_log.read_text()
            )
        )
        assert len(upstreams) == len(deployment.instances)


# --- a rolling restart under load -----------------------------------------------------------------

LOCUSTFILE = ROOT / "bench" / "locustfile.py"
LIVE_USERS = 4


async def rolling_restart(deployment: Deployment) -> list[tuple[str, int, float]]:
    """One instance at a time: out of nginx (a reload; the old nginx workers finish what they
    proxy and close their connections to it), SIGTERM, start again, back into nginx."""
    done = []
    for instance in deployment.instances:
        started = time.monotonic()
        await asyncio.to_thread(deployment.nginx.set_upstreams, deployment.upstreams(instance))
        returncode = await asyncio.to_thread(instance.stop_gracefully)
        await asyncio.to_thread(instance.start)
        await asyncio.to_thread(deployment.nginx.set_upstreams, deployment.upstreams())
        done.append((instance.name, returncode, time.monotonic() - started))
    return done


async def acknowledged_found(database_url: str, ids: list[int]) -> int:
    connection = await asyncpg.connect(database_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        found: int = await connection.fetchval(
            "SELECT count(*) FROM posts WHERE id = ANY($1::int[])", ids
        )
        return found
    finally:
        await connection.close()


async def prepare_load(deployment: Deployment, path: Path) -> None:
    """The load's accounts (signed up from addresses of their own: one login limit each) and
    the posts its WebSocket clients watch."""
    accounts = []
    for index in range(LOAD_CLIENTS):
        async with client_from(f"127.0.1.{index + 1}", deployment.url) as client:
            headers = await sign_up(client, f"load{index}")
            accounts.append({"username": f"load{index}", "token": headers["Authorization"][7:]})
            if index == 0:
                watched = []
                for title in ("Watched 1", "Watched 2"):
                    created = await client.post(
                        "/posts",
                        json={"title": title, "content": "watched", "published": True},
                        headers=headers,
                    )
                    watched.append(created.json()["id"])
    setup = {"accounts": accounts, "watched": watched, "readable": watched}
    await asyncio.to_thread(path.write_text, json.dumps(setup))


async def test_rolling_restart_under_load_costs_the_clients_nothing(
    deployment: Deployment, tmp_path: Path
) -> None:
    setup, report_path, locust_log = (
        tmp_path / "setup.json",
        tmp_path / "report.json",
        tmp_path / "locust.log",
    )
    await prepare_load(deployment, setup)
    env = {
        **os.environ,
        "LOAD_SETUP": str(setup),
        "LOAD_REPORT": str(report_path),
        "LOAD_LIVE_USERS": str(LIVE_USERS),
    }
    command = [
        *(sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless"),
        *("--users", str(LOAD_CLIENTS + LIVE_USERS), "--spawn-rate", "100"),
        *("--host", deployment.url, "--only-summary", "--stop-timeout", "10"),
        *("BlogUser", "LiveUser"),
    ]
    with locust_log.open("wb") as output:
        locust = await asyncio.create_subprocess_exec(
            *command, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    started = time.monotonic()
    try:
        await asyncio.sleep(5)  # load before
        restarts = await rolling_restart(deployment)
        await asyncio.sleep(5)  # and after
    finally:
        locust.send_signal(signal.SIGTERM)  # Locust stops its users and writes its report
        returncode = await asyncio.wait_for(locust.wait(), 60)
    took = time.monotonic() - started
    output = await asyncio.to_thread(locust_log.read_text, errors="replace")
    assert await asyncio.to_thread(report_path.exists), output
    report = json.loads(await asyncio.to_thread(report_path.read_text))
    found = await acknowledged_found(deployment.database_url, report["acknowledged"])
    figures = {
        "seconds": round(took, 1),
        "clients": f"{LOAD_CLIENTS} HTTP + {LIVE_USERS} WebSocket (Locust)",
        "requests": report["requests"],
        "5xx": report["server_errors"],
        "unexpected statuses": report["unexpected"],
        "transport errors": report["transport_errors"],
        "creates sent again": report["resent_creates"],
        "acknowledged writes": len(report["acknowledged"]),
        "writes found afterwards": found,
        "fresh reads after writes": report["fresh_reads"],
        "stale reads": report["stale_reads"],
        "identical replays": report["replays"],
        "replay mismatches": report["replay_mismatches"],
        "live events": report["live_events"],
        "comment events expected / missed": [
            report["comment_events_expected"],
            report["comment_events_missed"],
        ],
        "socket closes": report["socket_closes"],
        "p50 / p99 ms": [report["p50_ms"], report["p99_ms"]],
        "restarts (instance, exit status, seconds)": restarts,
        "errors": report["errors"],
    }
    print("\nrolling restart:", json.dumps(figures, indent=2))
    assert report["server_errors"] == 0 and report["unexpected"] == 0, report["errors"]
    assert found == len(report["acknowledged"]) > 0
    assert report["stale_reads"] == 0 and report["replay_mismatches"] == 0
    assert report["comment_events_missed"] == 0 and report["comment_events_expected"] > 0
    assert [status for _, status, _ in restarts] == [0] * len(deployment.instances)
    # Sockets are closed by their instance saying goodbye, never dropped.
    assert set(report["socket_closes"]) <= {"1001"}, report["socket_closes"]
    # A request nginx's reload closed under a client (its idle kept-alive connection) is the
    # only transport error allowed, and only a few: reads and creates are sent again.
    assert report["transport_errors"] <= 3, report["errors"]
    assert returncode in (0, 1), output
