"""`make soak`: five minutes of mixed traffic against two workers on PostgreSQL and Redis.

What it does, all on 127.0.0.1 and bounded in time and concurrency:

1. a scratch database `blog_soak` on the local PostgreSQL, dropped and created afresh, migrated
   with `manage.py migrate` and seeded small with `manage.py seed-demo` (8 users, 300 posts);
   Redis database 6 emptied with FLUSHDB (never FLUSHALL);
2. `uvicorn main:app --workers 2` on a free port with production settings: ENVIRONMENT=production,
   a random 48-char SECRET_KEY, Redis for the cache, rate limits and fan-out, rate limits on but
   far above the load, JSON logs to bench/results/soak-<time>.log;
3. the load from Locust, headless, in a process of its own (bench/locustfile.py): 32 virtual
   users listing (filters, cursors), reading (with ETags), writing with idempotency keys,
   editing with If-Match, commenting and deleting, and 6 WebSocket clients on the "hot" posts
   that get comments, reconnecting every 20-60 s; our own checks are its tasks and listeners
   (fresh reads after writes, identical replays, no missed live events); meanwhile this script
   polls /health/ready and /metrics as an orchestrator would;
4. each worker's VmRSS after the warm-up ("start"), every 10 s, and at the end;
5. a report (Locust's figures per call, ours, the workers' memory), printed and saved to
   bench/results/soak-<time>.txt. Exit status 1 on any 5xx, any status a call cannot
   legitimately answer, a transport error, a stale read after a write, a lost WebSocket event,
   a worker restart, or RSS growth of 10 % or more.

The server is stopped, the scratch database dropped and the Redis database flushed at the end,
also after Ctrl-C or a failure. Run with the project's venv:
`.venv/bin/python bench/soak.py [--duration 300]` (`--duration 20` is a quick self-check).
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import json
import math
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from common import (
    BENCH,
    HOST,
    RESULTS,
    ROOT,
    SERVER_FLAGS,
    BenchError,
    argument_parser,
    child_pids,
    cpu_seconds,
    drop_database,
    flush_redis,
    free_port,
    load_line,
    log,
    log_tail,
    log_text,
    machine_line,
    manage,
    proc_status,
    production_env,
    recreate_database,
    run_script,
    run_sql,
    start_in_session,
    stop_process_group,
)

PASSWORD = "soak-password"
# Far above what two workers serve, so they never trigger, but every request is counted; a
# per-second window keeps Redis's moving windows small (a sorted set of the last window's requests).
RATE_LIMIT = "2000/second"
HOT_POSTS = 4
STARTUP_TIMEOUT = 90.0
REQUEST_TIMEOUT = 30.0
LOCUSTFILE = BENCH / "locustfile.py"
SAMPLE_EVERY = 10.0  # seconds between RSS samples and worker checks
READY_EVERY = 5.0  # seconds between readiness polls, as an orchestrator would
METRICS_EVERY = 15.0  # seconds between /metrics scrapes, as Prometheus would

EXCEPTION_LINE = re.compile(r"[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning)\b")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argument_parser("bench/soak.py", __doc__)
    parser.add_argument("--duration", type=int, default=300, help="seconds of traffic in all")
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="seconds before the start RSS (default 20; a quarter of shorter runs)",
    )
    parser.add_argument("--users", type=int, default=32, help="concurrent virtual users (HTTP)")
    parser.add_argument("--ws-clients", type=int, default=6, help="concurrent WebSocket clients")
    parser.add_argument("--accounts", type=int, default=8, help="seeded users the traffic uses")
    parser.add_argument("--posts", type=int, default=300, help="seeded posts")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-growth", type=float, default=10.0, help="RSS growth limit, %%")
    parser.add_argument("--pg", default="postgresql://root@127.0.0.1:5432", help="server URL")
    parser.add_argument("--db", default="blog_soak", help="scratch database (dropped)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/6", help="flushed (FLUSHDB)")
    args = parser.parse_args(argv)
    if args.warmup is None:
        args.warmup = min(20, args.duration // 4)
    if args.duration < 4 or not 0 <= args.warmup < args.duration:
        parser.error("--duration must be 4 or more and --warmup below it")
    if args.users < 1 or args.accounts < 1 or args.ws_clients < 0 or args.workers < 1:
        parser.error("--users, --accounts and --workers must be 1 or more")
    if args.posts < 20:
        parser.error("--posts must be 20 or more")
    return args


# --- the service ---------------------------------------------------------------------------------


class Service:
    """`uvicorn main:app --workers N` in a session of its own, stopped by its process group."""

    def __init__(self, args: argparse.Namespace, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.ws_url = f"ws://{HOST}:{self.port}"
        self.workers = args.workers
        self.log_path = log_path
        self.command = [
            sys.executable,
            *("-m", "uvicorn", "main:app", "--host", HOST, "--port", str(self.port)),
            *("--workers", str(args.workers), "--ws-max-size", "65536", "--no-access-log"),
            *SERVER_FLAGS,
        ]
        self.process = start_in_session(self.command, env, log_path)

    def worker_pids(self) -> set[int]:
        """The worker processes: the supervisor's spawned children, not its resource tracker."""
        pids = set()
        for child in child_pids(self.process.pid):
            with suppress(OSError):
                if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                    pids.add(child)
        return pids

    def wait_ready(self) -> set[int]:
        """Wait until every worker has started and the service answers /health/ready."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        with httpx.Client(base_url=self.url, timeout=5, trust_env=False) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise BenchError(f"uvicorn exited ({self.process.returncode}):\n{self.tail()}")
                started = log_text(self.log_path).count("Application startup complete")
                if started >= self.workers and len(self.worker_pids()) == self.workers:
                    with suppress(httpx.HTTPError):
                        if client.get("/health/ready").status_code == 200:
                            return self.worker_pids()
                time.sleep(0.2)
        raise BenchError(f"the service did not start in {STARTUP_TIMEOUT:g} s:\n{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        return log_tail(self.log_path, lines)

    def stop(self) -> None:
        """SIGTERM the group (graceful shutdown of every worker); SIGKILL if it hangs."""
        stop_process_group(self.process, grace=20, kill_wait=10)


# --- the run -----------------------------------------------------------------------------------


@dataclass
class WorkerMemory:
    """RSS figures of one worker process, in MiB."""

    pid: int
    start: float = float("nan")
    end: float = float("nan")
    peak: float = float("nan")  # VmHWM at the end: the highest RSS of its life
    samples: list[float] = field(default_factory=list)
    anon_end: float = float("nan")  # RssAnon: the heap, where a leak would grow
    file_end: float = float("nan")  # RssFile: mapped files (code, the metrics files)
    cpu_start: float = float("nan")
    cpu_end: float = float("nan")

    @property
    def growth(self) -> float:
        return 100 * (self.end - self.start) / self.start


class Soak:
    """One run: the scratch data, the service, the traffic, the report and the clean-up."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.started = datetime.now(UTC)
        stamp = f"{self.started:%Y%m%d-%H%M%S}"
        self.report_path = RESULTS / f"soak-{stamp}.txt"
        self.log_path = RESULTS / f"soak-{stamp}.log"
        self.dsn = f"{args.pg.rstrip('/')}/{args.db}"
        self.admin_dsn = f"{args.pg.rstrip('/')}/postgres"
        self.secret = secrets.token_urlsafe(36)  # 48 characters
        self.service: Service | None = None
        self.database_created = False
        self.load: dict[str, Any] = {}  # bench/locustfile.py's report
        self.calls: list[dict[str, str]] = []  # Locust's statistics per call
        self.polls: Counter[str] = Counter()  # readiness and metrics polls by outcome
        self.memory: dict[int, WorkerMemory] = {}
        self.worker_changes: list[str] = []
        self.facts: dict[str, Any] = {}
        self.hot_titles: list[str] = []

    def env(self) -> dict[str, str]:
        env = production_env(
            dsn=self.dsn,
            redis_url=self.args.redis,
            secret=self.secret,
            rate_limit=RATE_LIMIT,
            login_limit="100/minute",
            cache_ttl=300,
        )
        # Defaults for these: a 10 + 10 pool per worker, a fresh metrics directory per run.
        for name in ("DB_POOL_SIZE", "DB_MAX_OVERFLOW", "PROMETHEUS_MULTIPROC_DIR"):
            env.pop(name, None)
        for name in ("FIRST_ADMIN_USERNAME", "FIRST_ADMIN_EMAIL", "FIRST_ADMIN_PASSWORD"):
            env.pop(name, None)
        return env

    def manage(self, *arguments: str) -> None:
        log(f"$ python manage.py {' '.join(arguments)}")
        manage(arguments, self.env(), timeout=600)

    # -- set-up and clean-up -----------------------------------------------------------------------

    def prepare(self) -> None:
        args = self.args

        async def recreate(connection: asyncpg.Connection) -> str:
            await recreate_database(connection, args.db)
            version: str = await connection.fetchval("SHOW server_version")
            return version

        log(f"database {args.db}: dropped and created afresh")
        try:
            self.facts["pg_version"] = run_sql(self.admin_dsn, recreate)
        except (OSError, asyncpg.PostgresError) as exc:
            raise BenchError(f"cannot reach PostgreSQL at {self.admin_dsn}: {exc}") from None
        self.database_created = True
        self.manage("migrate")
        self.manage(
            "seed-demo",
            *("--users", str(args.accounts), "--posts", str(args.posts)),
            *("--comments", str(args.posts * 2), "--seed", "1", "--password", PASSWORD),
        )

        async def facts(connection: asyncpg.Connection) -> tuple[list[str], list[int]]:
            usernames = await connection.fetch(
                "SELECT username FROM users WHERE username LIKE 'demo\\_user\\_%' ORDER BY id"
            )
            published = await connection.fetch("SELECT id FROM posts WHERE published ORDER BY id")
            return [row[0] for row in usernames], [row[0] for row in published]

        self.usernames, self.seeded_ids = run_sql(self.dsn, facts)
        if not self.usernames or not self.seeded_ids:
            raise BenchError("seed-demo left no demo users or no published posts")
        try:
            self.facts["redis_version"] = flush_redis(args.redis)
        except Exception as exc:
            raise BenchError(f"cannot reach Redis at {args.redis}: {exc}") from None

    def clean_up(self) -> None:
        """Stop the service, drop the scratch database, empty the Redis database."""
        if self.service is not None:
            self.service.stop()
            self.service = None
        if self.database_created:
            with suppress(Exception):
                run_sql(self.admin_dsn, lambda connection: drop_database(connection, self.args.db))
                self.database_created = False
        with suppress(Exception):
            flush_redis(self.args.redis)

    # -- traffic -----------------------------------------------------------------------------------

    def setup_load(self, service: Service, path: Path) -> None:
        """Sign the accounts in and write the hot posts the WebSocket clients watch: Locust's
        setup file."""
        with httpx.Client(base_url=service.url, timeout=REQUEST_TIMEOUT, trust_env=False) as client:
            accounts = []
            for username in self.usernames[: self.args.accounts]:
                answer = client.post(
                    "/auth/login", data={"username": username, "password": PASSWORD}
                )
                if answer.status_code != 200:
                    raise BenchError(f"login as {username}: {answer.status_code} {answer.text}")
                accounts.append({"username": username, "token": answer.json()["access_token"]})
            hot_ids = []
            for number in range(HOT_POSTS):
                title = f"soak hot post {number} {secrets.token_hex(3)}"
                answer = client.post(
                    "/posts",
                    json={"title": title, "content": "Watched by the soak's WebSocket clients."},
                    headers={"Authorization": f"Bearer {accounts[0]['token']}"},
                )
                if answer.status_code != 201:
                    raise BenchError(f"creating a hot post: {answer.status_code} {answer.text}")
                hot_ids.append(answer.json()["id"])
                self.hot_titles.append(title)
        setup = {
            "accounts": accounts,
            "watched": hot_ids,
            "watched_titles": self.hot_titles,
            "readable": self.seeded_ids + hot_ids,
        }
        path.write_text(json.dumps(setup))

    def traffic(self, service: Service) -> None:
        """Locust for the duration, this process polling and sampling beside it."""
        args = self.args
        work = Path(tempfile.mkdtemp(prefix="soak-locust-"))
        self.setup_load(service, work / "setup.json")
        env = {
            **os.environ,
            "LOAD_SETUP": str(work / "setup.json"),
            "LOAD_REPORT": str(work / "report.json"),
            "LOAD_LIVE_USERS": str(args.ws_clients),
        }
        command = [
            *(sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless"),
            *("--users", str(args.users + args.ws_clients), "--spawn-rate", "100"),
            *("--run-time", f"{args.duration}s", "--stop-timeout", "15"),
            *("--host", service.url, "--csv", str(work / "stats"), "--only-summary"),
            *("--loglevel", "WARNING", "BlogUser"),
            *(["LiveUser"] if args.ws_clients else []),
        ]
        log(
            f"traffic (Locust): {args.duration} s, {args.users} virtual users, {args.ws_clients} "
            f"WebSocket clients; start RSS after {args.warmup} s"
        )
        locust_log = RESULTS / f"{self.log_path.stem}-locust.txt"
        with locust_log.open("wb") as output:
            locust = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
        started = time.monotonic()
        try:
            self.monitor(service, locust, started)
            self.facts["traffic_seconds"] = time.monotonic() - started
            self.sample_memory(service, "end")
            locust.wait(timeout=120)
        finally:
            if locust.poll() is None:
                locust.send_signal(signal.SIGINT)
                with suppress(subprocess.TimeoutExpired):
                    locust.wait(timeout=30)
            if locust.poll() is None:
                locust.kill()
        self.facts["locust_log"] = locust_log
        report = work / "report.json"
        if not report.exists():
            raise BenchError(f"Locust wrote no report:\n{log_tail(locust_log, 30)}")
        self.load = json.loads(report.read_text())
        with suppress(OSError), (work / "stats_stats.csv").open() as handle:
            self.calls = list(csv.DictReader(handle))

    def monitor(self, service: Service, locust: subprocess.Popen[bytes], started: float) -> None:
        """Poll readiness and metrics like an orchestrator would; sample RSS; watch the workers;
        until the traffic's time is up (Locust then lets its users finish)."""
        polls = {"/health/ready": READY_EVERY, "/metrics": METRICS_EVERY}
        due = dict.fromkeys(polls, started)
        next_sample = started
        start_taken = False
        with httpx.Client(base_url=service.url, timeout=REQUEST_TIMEOUT, trust_env=False) as client:
            while time.monotonic() - started < self.args.duration and locust.poll() is None:
                for path, every in polls.items():
                    if time.monotonic() >= due[path]:
                        due[path] += every
                        try:
                            status = str(client.get(path).status_code)
                        except httpx.HTTPError as exc:
                            status = type(exc).__name__
                        self.polls[f"GET {path} {status}"] += 1
                now = time.monotonic()
                if not start_taken and now - started >= self.args.warmup:
                    self.sample_memory(service, "start")
                    start_taken = True
                if now >= next_sample:
                    next_sample += SAMPLE_EVERY
                    self.sample_memory(service, "sample")
                    rss = ", ".join(
                        f"{m.samples[-1]:.1f}" for m in self.memory.values() if m.samples
                    )
                    log(f"  {now - started:4.0f} s: worker RSS {rss} MB")
                time.sleep(1)

    def sample_memory(self, service: Service, phase: str) -> None:
        pids = service.worker_pids()
        if self.memory and pids != set(self.memory):
            change = f"workers {sorted(self.memory)} became {sorted(pids)} ({phase})"
            if change not in self.worker_changes:
                self.worker_changes.append(change)
        for pid in pids:
            memory = self.memory.setdefault(pid, WorkerMemory(pid))
            status = proc_status(pid)
            if "VmRSS" not in status:
                continue
            memory.samples.append(status["VmRSS"])
            if phase == "start":
                memory.start = status["VmRSS"]
                memory.cpu_start = cpu_seconds(pid)
            elif phase == "end":
                memory.end = status["VmRSS"]
                memory.peak = status["VmHWM"]
                memory.cpu_end = cpu_seconds(pid)
                memory.anon_end = status.get("RssAnon", float("nan"))
                memory.file_end = status.get("RssFile", float("nan"))

    def run(self) -> int:
        args = self.args
        RESULTS.mkdir(parents=True, exist_ok=True)
        self.load_start = os.getloadavg()
        self.prepare()
        self.service = Service(args, self.env(), self.log_path)
        pids = self.service.wait_ready()
        self.memory = {pid: WorkerMemory(pid) for pid in pids}
        log(
            f"service: {self.service.url}, workers {sorted(pids)}, "
            f"log {self.relative(self.log_path)}"
        )
        self.traffic(self.service)
        self.service.stop()
        self.log_levels, self.log_errors = self.read_log()
        self.load_end = os.getloadavg()
        report, failures = self.report()
        self.report_path.write_text(report)
        log("\n" + report)
        log(f"(report saved to {self.relative(self.report_path)})")
        return 1 if failures else 0

    def read_log(self) -> tuple[Counter[str], list[str]]:
        """Records per level in the server log, and those above INFO grouped by what failed."""
        levels: Counter[str] = Counter()
        kinds: Counter[str] = Counter()
        examples: dict[str, str] = {}
        with suppress(OSError), self.log_path.open("rb") as handle:
            for raw in handle:
                line = raw.decode(errors="replace").strip()
                try:
                    record = json.loads(line)
                except ValueError:  # uvicorn's supervisor prints `LEVEL:     message`
                    level, _, message = line.partition(":")
                    record = {"level": level, "logger": "uvicorn", "message": message.strip()}
                level = str(record.get("level", "?"))
                levels[level] += 1
                if level in ("INFO", "DEBUG"):
                    continue
                # The exception's own line: `module.Error: text`, before SQLAlchemy's [SQL: ...].
                exception = [
                    line
                    for line in str(record.get("exc_info") or "").splitlines()
                    if EXCEPTION_LINE.match(line)
                ]
                what = exception[-1] if exception else str(record.get("message"))
                what = re.sub(r"0x[0-9a-f]+", "0x...", what)  # one kind, whatever the address
                kind = f"{level} {record.get('logger')}: {what[:300]}"
                kinds[kind] += 1
                examples.setdefault(
                    kind, f"{record.get('message')} (request_id {record.get('request_id')})"
                )
        serious = [f"{n} x {kind}; first: {examples[kind]}" for kind, n in kinds.most_common(10)]
        return levels, serious

    @staticmethod
    def relative(path: Path) -> str:
        return str(path.relative_to(ROOT))

    # -- the report --------------------------------------------------------------------------------

    def report(self) -> tuple[str, list[str]]:
        args = self.args
        load = self.load
        seconds = self.facts.get("traffic_seconds", float("nan"))
        workers = sorted(self.memory.values(), key=lambda m: m.pid)
        failed_polls = {k: n for k, n in self.polls.items() if not k.endswith(" 200")}

        failures = []
        if load["server_errors"]:
            failures.append(f"{load['server_errors']} answers were 5xx")
        if load["unexpected"]:
            failures.append(f"{load['unexpected']} answers had a status their call cannot answer")
        if load["transport_errors"]:
            failures.append(f"{load['transport_errors']} requests failed without an answer")
        if load["stale_reads"]:
            failures.append(f"{load['stale_reads']} stale reads after a write")
        if load["replay_mismatches"]:
            failures.append(f"{load['replay_mismatches']} idempotent replays differed")
        if load["comment_events_missed"]:
            failures.append(
                f"{load['comment_events_missed']} comment events did not reach an open socket"
            )
        if args.ws_clients and not load["comment_events_expected"]:
            failures.append("no comment event was due to an open socket")
        if set(load["socket_closes"]) - {"1000"}:
            failures.append(f"WebSocket closes: {load['socket_closes']}")
        if failed_polls:
            failures.append(f"readiness or metrics polls failed: {failed_polls}")
        if self.worker_changes:
            failures.append("worker processes changed: " + "; ".join(self.worker_changes))
        for memory in workers:
            if math.isnan(memory.growth):
                failures.append(f"worker {memory.pid}: no RSS at start and end")
            elif memory.growth >= args.max_growth:
                failures.append(
                    f"worker {memory.pid}: RSS grew {memory.growth:.1f} % (limit "
                    f"{args.max_growth:g} %)"
                )
        if not load["requests"]:
            failures.append("no request was answered")

        lines = [
            f"# Soak: {args.workers} workers on PostgreSQL + Redis ({self.started:%Y-%m-%d %H:%M}"
            " UTC)",
            "",
            machine_line(self.facts.get("pg_version"), self.facts.get("redis_version")),
            load_line(self.load_start[0], self.load_end[0]),
            f"- data: scratch database `{args.db}` (dropped after), `seed-demo` with "
            f"{args.accounts} users and {args.posts} posts ({len(self.seeded_ids)} published), "
            f"{HOT_POSTS} hot posts for the sockets; Redis `{args.redis}` (flushed)",
            f"- service: `uvicorn main:app --workers {args.workers} --ws-max-size 65536 "
            "--no-access-log`, ENVIRONMENT=production, Redis cache/rate limits/fan-out, rate "
            f"limits {RATE_LIMIT} (never reached), DB pool 10 + 10 per worker, JSON logs to "
            f"{self.relative(self.log_path)}",
            f"- traffic: Locust (bench/locustfile.py, headless, one process), {seconds:.0f} s, "
            f"{args.users} virtual users pausing 50-300 ms, {args.ws_clients} WebSocket clients "
            f"(reconnecting every 20-60 s); RSS start after {args.warmup} s; Locust's own output "
            f"in {self.relative(self.facts['locust_log'])}",
            "",
            "## Figures",
            "",
            f"- requests: {load['requests']:,} ({load['rps']:.0f}/s); 5xx: "
            f"{load['server_errors']}; unexpected statuses: {load['unexpected']}; transport "
            f"errors: {load['transport_errors']}",
            f"- latency (Locust's): p50 {load['p50_ms']} ms, p99 {load['p99_ms']} ms",
            f"- reads right after a write: {load['fresh_reads']:,}, stale {load['stale_reads']}; "
            f"idempotent replays: {load['replays']:,}, different {load['replay_mismatches']}",
            f"- WebSocket: events received {load['live_events']:,}; comment events due to an open "
            f"socket {load['comment_events_expected']:,}, missed {load['comment_events_missed']}; "
            f"closes {load['socket_closes'] or 0}",
            f"- readiness and metrics polls: {dict(self.polls)}",
            f"- server log: {dict(self.log_levels)}",
            "",
            "| worker pid | RSS start MB | RSS end MB | growth | min-max of samples MB | "
            "peak (VmHWM) MB | anon/file at end MB | CPU s after warm-up |",
            "| ---: | ---: | ---: | ---: | --- | ---: | --- | ---: |",
        ]
        for memory in workers:
            samples = memory.samples or [float("nan")]
            lines.append(
                f"| {memory.pid} | {memory.start:.1f} | {memory.end:.1f} | "
                f"{memory.growth:+.1f} % | {min(samples):.1f}-{max(samples):.1f} | "
                f"{memory.peak:.1f} | {memory.anon_end:.1f}/{memory.file_end:.1f} | "
                f"{memory.cpu_end - memory.cpu_start:.0f} |"
            )
        lines += [
            "",
            "| call (Locust) | requests | failures | p50 ms | p99 ms |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for row in self.calls:
            lines.append(
                f"| `{row['Type']} {row['Name']}` | {int(row['Request Count']):,} | "
                f"{row['Failure Count']} | {row['50%']} | {row['99%']} |"
            )
        problems = [f"{n} x {error}" for error, n in load["errors"].items()]
        problems += load["stale_examples"] + load["replay_examples"]
        if problems:
            lines += ["", "## Problems seen", ""] + [f"- {p}" for p in problems]
        if self.log_errors:
            lines += ["", "## Server log records above INFO, by what failed", ""]
            lines += [f"- {line}" for line in self.log_errors]
        lines += ["", "## Verdict", ""]
        if failures:
            lines += ["FAIL"] + [f"- {failure}" for failure in failures]
        else:
            lines.append(
                f"PASS: no 5xx, every status expected, RSS growth under {args.max_growth:g} % "
                "on every worker"
            )
        lines += ["", f"Command: `.venv/bin/python bench/soak.py --duration {args.duration}`"]
        return "\n".join(lines) + "\n", failures


def exit_on_sigterm() -> None:
    """Outside the event loop, SIGTERM unwinds like Ctrl-C, through the clean-up."""

    def interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_sigterm()
    # Two runs would drop each other's database: one soak per database name on this machine.
    lock_path = Path(tempfile.gettempdir()) / f"blog-soak-{args.db}.lock"
    with lock_path.open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(
                f"error: another soak is using {args.db} ({lock_path} is locked)", file=sys.stderr
            )
            return 1
        soak = Soak(args)
        return run_script(soak.run, soak.clean_up)


if __name__ == "__main__":
    sys.exit(main())
