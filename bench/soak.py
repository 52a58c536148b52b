"""`make soak`: five minutes of mixed traffic against two workers on PostgreSQL and Redis.

What it does, all on 127.0.0.1 and bounded in time and concurrency:

1. a scratch database `blog_soak` on the local PostgreSQL, dropped and created afresh, migrated
   with `manage.py migrate` and seeded small with `manage.py seed-demo` (8 users, 300 posts);
   Redis database 6 emptied with FLUSHDB (never FLUSHALL);
2. `uvicorn main:app --workers 2` on a free port with production settings: ENVIRONMENT=production,
   a random 48-char SECRET_KEY, Redis for the cache, rate limits and fan-out, rate limits on but
   far above the load, JSON logs to bench/results/soak-<time>.log;
3. one asyncio process: 32 virtual users (httpx; a quarter open a fresh connection per request,
   the others recycle theirs now and then, so both workers serve) listing, reading, writing,
   editing, commenting and deleting, 6 WebSocket clients on the "hot" posts that get comments and
   edits, reconnecting every 20-60 s, and a monitor polling /health/ready and /metrics;
4. each worker's VmRSS after the warm-up ("start"), every 10 s, and at the end;
5. a report, printed and saved to bench/results/soak-<time>.txt. Exit status 1 on any 5xx, any
   status a call cannot legitimately answer, a transport error, a stale read after a write, a
   lost WebSocket event, a worker restart, or RSS growth of 10 % or more.

The server is stopped, the scratch database dropped and the Redis database flushed at the end,
also after Ctrl-C or a failure. Run with the project's venv:
`.venv/bin/python bench/soak.py [--duration 300]` (`--duration 20` is a quick self-check).
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import math
import os
import random
import re
import resource
import secrets
import signal
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from common import (
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
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

PASSWORD = "soak-password"
# Far above what two workers serve, so they never trigger, but every request is counted; a
# per-second window keeps Redis's moving windows small (a sorted set of the last window's requests).
RATE_LIMIT = "2000/second"
HOT_POSTS = 4
STARTUP_TIMEOUT = 90.0
REQUEST_TIMEOUT = 30.0
SAMPLE_EVERY = 10.0  # seconds between RSS samples and worker checks
READY_EVERY = 5.0  # seconds between readiness polls, as an orchestrator would
METRICS_EVERY = 15.0  # seconds between /metrics scrapes, as Prometheus would
# A comment must be answered this long before a socket closes to count as "must have arrived".
DELIVERY_MARGIN = 10.0
PROBLEM_EXAMPLES = 3  # examples kept per kind of problem (call and status, say)
SEARCH_WORDS = ("python", "database", "async", "testing", "nothing-matches-this")
OWN_POSTS_KEPT = 12  # per virtual user; older ones are deleted, which bounds the data
OWN_COMMENTS_KEPT = 12

EXCEPTION_LINE = re.compile(r"[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning)\b")
OK = frozenset({200})
MAYBE_GONE = frozenset({200, 404})  # a post another request may have deleted


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
    parser.add_argument("--think-ms", type=float, default=20.0, help="mean pause between calls")
    parser.add_argument("--accounts", type=int, default=8, help="seeded users the traffic uses")
    parser.add_argument("--posts", type=int, default=300, help="seeded posts")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-growth", type=float, default=10.0, help="RSS growth limit, %%")
    parser.add_argument("--pg", default="postgresql://root@127.0.0.1:5432", help="server URL")
    parser.add_argument("--db", default="blog_soak", help="scratch database (dropped)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/6", help="flushed (FLUSHDB)")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the traffic")
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


# --- what the traffic records --------------------------------------------------------------------


@dataclass
class CallStats:
    """The answers to one kind of call."""

    statuses: Counter[int] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)


@dataclass
class LiveSession:
    """One WebSocket connection: when it was open and which comment events it got."""

    post_id: int
    opened: float
    closed: float = math.inf
    comment_ids: set[int] = field(default_factory=set)


@dataclass
class HotComment:
    """A comment written on a hot post: when its request started and was answered."""

    post_id: int
    comment_id: int
    started: float
    answered: float


@dataclass
class Recorder:
    """Everything the traffic saw, shared by every task of the load generator."""

    calls: dict[str, CallStats] = field(default_factory=dict)
    unexpected: Counter[str] = field(default_factory=Counter)
    transport_errors: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)  # the first few of each kind
    problem_kinds: Counter[str] = field(default_factory=Counter)
    stale_reads: int = 0
    fresh_checks: int = 0
    replays: int = 0
    replay_mismatches: int = 0
    hot_comments: list[HotComment] = field(default_factory=list)
    live_sessions: list[LiveSession] = field(default_factory=list)
    live_events: Counter[str] = field(default_factory=Counter)
    live_failures: Counter[str] = field(default_factory=Counter)

    def record(
        self, call: str, response: httpx.Response, seconds: float, expected: frozenset[int]
    ) -> None:
        stats = self.calls.setdefault(call, CallStats())
        stats.statuses[response.status_code] += 1
        stats.latencies_ms.append(1000 * seconds)
        if response.status_code not in expected:
            self.unexpected[call] += 1
            request_id = response.headers.get("x-request-id", "?")
            self.problem(
                f"{call} {response.status_code}",
                f"{call}: {response.request.method} {response.request.url.raw_path.decode()} -> "
                f"{response.status_code} {response.text[:200]!r} (X-Request-ID {request_id})",
            )

    def transport_error(self, call: str, exc: Exception) -> None:
        self.transport_errors[call] += 1
        self.problem(f"{call} {type(exc).__name__}", f"{call}: {type(exc).__name__}: {exc}")

    def problem(self, kind: str, text: str) -> None:
        """Keep a few examples of each kind of problem for the report."""
        self.problem_kinds[kind] += 1
        if self.problem_kinds[kind] <= PROBLEM_EXAMPLES:
            self.problems.append(text)

    def all_latencies(self) -> list[float]:
        return sorted(ms for stats in self.calls.values() for ms in stats.latencies_ms)

    def statuses(self) -> Counter[int]:
        total: Counter[int] = Counter()
        for stats in self.calls.values():
            total.update(stats.statuses)
        return total

    def missed_comment_events(self) -> tuple[int, int]:
        """(expected, missed): comments a socket on their post was open for, start to answer."""
        by_post: dict[int, list[HotComment]] = {}
        for comment in self.hot_comments:
            by_post.setdefault(comment.post_id, []).append(comment)
        expected = missed = 0
        for session in self.live_sessions:
            for comment in by_post.get(session.post_id, ()):
                if session.opened <= comment.started and comment.answered <= (
                    session.closed - DELIVERY_MARGIN
                ):
                    expected += 1
                    if comment.comment_id not in session.comment_ids:
                        missed += 1
        return expected, missed


def percentile(sorted_values: list[float], share: float) -> float:
    """The nearest-rank percentile of values already sorted (NaN for none)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(share * len(sorted_values)))
    return sorted_values[rank - 1]


# --- the load generator --------------------------------------------------------------------------


@dataclass
class Account:
    """A seeded user the traffic signs in as."""

    username: str
    token: str


@dataclass
class World:
    """What the virtual users share: the service, the accounts and the posts they know."""

    base_url: str
    ws_url: str
    accounts: list[Account]
    seeded_ids: list[int]  # published seeded posts: never deleted during the run
    hot_ids: list[int]  # written by accounts[0], watched by the WebSocket clients
    hot_titles: list[str]
    deadline: float
    think_seconds: float  # the mean pause of a virtual user between two calls
    recorder: Recorder
    recent_ids: deque[int] = field(default_factory=lambda: deque(maxlen=300))
    running: bool = True

    def over(self) -> bool:
        return not self.running or time.monotonic() >= self.deadline


class VirtualUser:
    """One client in a loop of weighted calls, signed in as one of the accounts."""

    def __init__(self, world: World, index: int, seed: int) -> None:
        self.world = world
        self.index = index
        self.rng = random.Random(seed * 1000 + index)
        self.account = world.accounts[index % len(world.accounts)]
        self.auth = {"Authorization": f"Bearer {self.account.token}"}
        # A quarter open a connection per request: with keep-alive alone a client stays on the
        # worker that accepted it, and the kernel would decide how the workers share the load.
        self.fresh_connections = index % 4 == 3
        self.client = self.new_client()
        self.requests_left = self.rng.randint(100, 400)
        self.own_posts: deque[int] = deque()
        self.own_comments: deque[tuple[int, int]] = deque()
        self.etags: dict[int, str] = {}
        self.serial = 0
        self.actions = [
            (self.list_first_page, 14),
            (self.list_filtered, 12),
            (self.list_next_pages, 6),
            (self.read_post, 25),
            (self.list_comments, 10),
            (self.create_post, 6),
            (self.edit_post, 6),
            (self.create_comment, 10),
            (self.delete_comment, 3),
            (self.delete_post, 2),
            (self.read_me, 2),
            (self.duplicate_title, 1),
            (self.invalid_cursor, 1),
        ]

    def new_client(self) -> httpx.AsyncClient:
        headers = {"Connection": "close"} if self.fresh_connections else {}
        return httpx.AsyncClient(
            base_url=self.world.base_url,
            timeout=REQUEST_TIMEOUT,
            headers=headers,
            trust_env=False,  # loopback only: never through a proxy from the environment
        )

    async def run(self) -> None:
        functions = [action for action, _ in self.actions]
        weights = [weight for _, weight in self.actions]
        try:
            while not self.world.over():
                await self.rng.choices(functions, weights)[0]()
                await asyncio.sleep(self.rng.uniform(0, 2 * self.world.think_seconds))
        finally:
            await self.client.aclose()

    async def call(
        self,
        name: str,
        method: str,
        path: str,
        expected: frozenset[int],
        *,
        signed_in: bool = False,
        fresh: bool = False,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> httpx.Response | None:
        """One request, timed and checked against the statuses this call may answer."""
        all_headers = {**(self.auth if signed_in else {}), **(headers or {})}
        if fresh:
            all_headers["Connection"] = "close"
        await self.maybe_recycle()
        started = time.perf_counter()
        try:
            response = await self.client.request(method, path, headers=all_headers, **kwargs)
        except httpx.HTTPError as exc:
            self.world.recorder.transport_error(name, exc)
            return None
        self.world.recorder.record(name, response, time.perf_counter() - started, expected)
        return response

    async def maybe_recycle(self) -> None:
        """Now and then drop the kept-alive connection, so the next may land on another worker."""
        self.requests_left -= 1
        if self.requests_left <= 0 and not self.fresh_connections:
            await self.client.aclose()
            self.client = self.new_client()
            self.requests_left = self.rng.randint(100, 400)

    def pick_post(self) -> tuple[int, frozenset[int]]:
        """A post to read and the statuses reading it may answer."""
        roll = self.rng.random()
        if roll < 0.2 and self.world.recent_ids:
            return self.rng.choice(self.world.recent_ids), MAYBE_GONE
        if roll < 0.3:
            return self.rng.choice(self.world.hot_ids), OK
        return self.rng.choice(self.world.seeded_ids), OK

    # -- reads ------------------------------------------------------------------------------------

    async def list_first_page(self) -> None:
        await self.call("GET /posts", "GET", "/posts", OK, signed_in=self.rng.random() < 0.3)

    async def list_filtered(self) -> None:
        account = self.rng.choice(self.world.accounts)
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        params = self.rng.choice(
            [
                {"author": account.username},
                {"q": self.rng.choice(SEARCH_WORDS)},
                {"sort": "title", "limit": "20"},
                {"sort": "-updated_at"},
                {"count": "true", "limit": "5"},
                {"min_date": "2000-01-01T00:00:00Z", "max_date": now},
                {"skip": str(self.rng.randint(0, 200)), "limit": "10"},
            ]
        )
        signed_in = self.rng.random() < 0.3
        if self.rng.random() < 0.1:
            params, signed_in = {"published": "false"}, True  # the caller's own drafts
        await self.call(
            "GET /posts?filters", "GET", "/posts", OK, signed_in=signed_in, params=params
        )

    async def list_next_pages(self) -> None:
        sort = self.rng.choice(["-created_at", "created_at", "title"])
        response = await self.call(
            "GET /posts?cursor", "GET", "/posts", OK, params={"limit": "10", "sort": sort}
        )
        for _ in range(self.rng.randint(1, 3)):
            link = response.links.get("next", {}).get("url") if response is not None else None
            if not link or self.world.over():
                return
            response = await self.call("GET /posts?cursor", "GET", link, OK)

    async def read_post(self) -> None:
        post_id, expected = self.pick_post()
        headers = {}
        if post_id in self.etags and self.rng.random() < 0.5:
            headers["If-None-Match"] = self.etags[post_id]
            expected = expected | {304}
        response = await self.call(
            "GET /posts/{id}", "GET", f"/posts/{post_id}", expected, headers=headers
        )
        if response is not None and response.status_code == 200 and len(self.etags) < 200:
            self.etags[post_id] = response.headers.get("etag", "")

    async def list_comments(self) -> None:
        post_id, expected = self.pick_post()
        params = {"limit": str(self.rng.choice([5, 10, 50]))}
        response = await self.call(
            "GET /posts/{id}/comments", "GET", f"/posts/{post_id}/comments", expected, params=params
        )
        link = response.links.get("next", {}).get("url") if response is not None else None
        if link and self.rng.random() < 0.5:
            await self.call("GET /posts/{id}/comments", "GET", link, expected)

    async def read_me(self) -> None:
        await self.call("GET /users/me", "GET", "/users/me", OK, signed_in=True)

    # -- writes -----------------------------------------------------------------------------------

    def new_title(self) -> str:
        self.serial += 1
        return f"soak {self.index}-{self.serial} {secrets.token_hex(3)}"

    def content(self) -> str:
        words = self.rng.choices((*SEARCH_WORDS[:-1], "soak", "post", "worker", "cache"), k=40)
        return " ".join(words)

    async def create_post(self) -> None:
        body: dict[str, Any] = {"title": self.new_title(), "content": self.content()}
        if self.rng.random() < 0.1:
            body["published"] = False
        headers = {}
        if self.rng.random() < 0.2:
            headers["Idempotency-Key"] = secrets.token_hex(8)
        response = await self.send_post("POST /posts", body, headers)
        if response is None:
            return
        post = response.json()
        self.own_posts.append(post["id"])
        if post["published"]:
            self.world.recent_ids.append(post["id"])
        if headers and self.rng.random() < 0.5:
            await self.replay(body, headers, post)
        while len(self.own_posts) > OWN_POSTS_KEPT:
            await self.delete_post()

    async def send_post(
        self, name: str, body: dict[str, Any], headers: dict[str, str], *, fresh: bool = False
    ) -> httpx.Response | None:
        """POST /posts signed in as call `name`; the answer if it is 201 Created, else None."""
        response = await self.call(
            name,
            "POST",
            "/posts",
            frozenset({201}),
            signed_in=True,
            fresh=fresh,
            json=body,
            headers=headers,
        )
        return response if response is not None and response.status_code == 201 else None

    async def replay(self, body: dict[str, Any], headers: dict[str, str], first: Any) -> None:
        """The same POST with the same Idempotency-Key: the first answer again, no second post."""
        response = await self.send_post("POST /posts (replay)", body, headers, fresh=True)
        if response is None:
            return
        recorder = self.world.recorder
        recorder.replays += 1
        replayed = response.headers.get("idempotent-replayed") == "true"
        if not replayed or response.json() != first:
            recorder.replay_mismatches += 1
            recorder.problem(
                "replay", f"idempotent replay of post {first['id']} answered {response.text!r}"
            )

    async def edit_post(self) -> None:
        if self.account is self.world.accounts[0] and self.rng.random() < 0.4:
            await self.edit_hot_post()
            return
        if not self.own_posts:
            await self.create_post()
            return
        post_id = self.rng.choice(self.own_posts)
        current = await self.call(
            "GET /posts/{id} (own)", "GET", f"/posts/{post_id}", OK, signed_in=True
        )
        if current is None or current.status_code != 200:
            return
        content = self.content()
        response = await self.call(
            "PATCH /posts/{id}",
            "PATCH",
            f"/posts/{post_id}",
            OK,
            signed_in=True,
            json={"content": content},
            headers={"If-Match": current.headers["etag"]},
        )
        if response is not None and response.status_code == 200:
            await self.check_fresh(post_id, content)

    async def check_fresh(self, post_id: int, content: str) -> None:
        """Right after a write, a read on a new connection (either worker) sees the write."""
        response = await self.call(
            "GET /posts/{id} (after write)",
            "GET",
            f"/posts/{post_id}",
            OK,
            signed_in=True,
            fresh=True,
        )
        if response is None or response.status_code != 200:
            return
        recorder = self.world.recorder
        recorder.fresh_checks += 1
        if response.json()["content"] != content:
            recorder.stale_reads += 1
            recorder.problem(
                "stale read",
                f"stale read of post {post_id} after PATCH (X-Cache "
                f"{response.headers.get('x-cache')}, ETag {response.headers.get('etag')})",
            )

    async def edit_hot_post(self) -> None:
        """Edit a post the sockets watch; other users of the account race for it, hence 412."""
        post_id = self.rng.choice(self.world.hot_ids)
        current = await self.call("GET /posts/{id}", "GET", f"/posts/{post_id}", OK)
        if current is None or current.status_code != 200:
            return
        await self.call(
            "PATCH /posts/{id} (hot)",
            "PATCH",
            f"/posts/{post_id}",
            frozenset({200, 412}),
            signed_in=True,
            json={"content": self.content()},
            headers={"If-Match": current.headers["etag"]},
        )

    async def create_comment(self) -> None:
        roll = self.rng.random()
        if roll < 0.5:
            post_id, expected = self.rng.choice(self.world.hot_ids), frozenset({201})
        else:
            post_id, read_expected = self.pick_post()
            expected = frozenset({201, 404}) if 404 in read_expected else frozenset({201})
        body = {"text": f"soak comment {self.index}-{self.serial} " + self.content()[:200]}
        headers = {"Idempotency-Key": secrets.token_hex(8)} if self.rng.random() < 0.2 else {}
        started = time.monotonic()
        response = await self.call(
            "POST /posts/{id}/comments",
            "POST",
            f"/posts/{post_id}/comments",
            expected,
            signed_in=True,
            json=body,
            headers=headers,
        )
        if response is None or response.status_code != 201:
            return
        comment_id = response.json()["id"]
        if post_id in self.world.hot_ids:
            self.world.recorder.hot_comments.append(
                HotComment(post_id, comment_id, started, time.monotonic())
            )
        self.own_comments.append((post_id, comment_id))
        while len(self.own_comments) > OWN_COMMENTS_KEPT:
            await self.delete_comment()

    async def delete_comment(self) -> None:
        if not self.own_comments:
            return
        post_id, comment_id = self.own_comments.popleft()
        # 404: the post it was on was deleted since (its comments went with it).
        await self.call(
            "DELETE /posts/{id}/comments/{id}",
            "DELETE",
            f"/posts/{post_id}/comments/{comment_id}",
            frozenset({204, 404}),
            signed_in=True,
        )

    async def delete_post(self) -> None:
        if not self.own_posts:
            return
        post_id = self.own_posts.popleft()
        with suppress(ValueError):
            self.world.recent_ids.remove(post_id)
        await self.call(
            "DELETE /posts/{id}", "DELETE", f"/posts/{post_id}", frozenset({204}), signed_in=True
        )

    # -- errors the client causes -----------------------------------------------------------------

    async def duplicate_title(self) -> None:
        title = self.rng.choice(self.world.hot_titles).upper()  # titles clash case-insensitively
        await self.call(
            "POST /posts (taken title)",
            "POST",
            "/posts",
            frozenset({409}),
            signed_in=True,
            json={"title": title, "content": "a clash"},
        )

    async def invalid_cursor(self) -> None:
        await self.call(
            "GET /posts?cursor=bad", "GET", "/posts", frozenset({422}), params={"cursor": "x!"}
        )


class LiveClient:
    """A WebSocket client on a hot post; reconnects every 20-60 s; half of them signed in."""

    def __init__(self, world: World, index: int, seed: int) -> None:
        self.world = world
        self.index = index
        self.rng = random.Random(seed * 1000 + 500 + index)
        self.token = world.accounts[index % len(world.accounts)].token if index % 2 == 0 else None

    async def run(self, until: float) -> None:
        recorder = self.world.recorder
        while self.world.running and time.monotonic() < until:
            post_id = self.world.hot_ids[(self.index + self.rng.randrange(2)) % HOT_POSTS]
            url = f"{self.world.ws_url}/ws/posts/{post_id}"
            if self.token:
                url += f"?token={self.token}"
            try:
                async with connect(url, proxy=None, open_timeout=REQUEST_TIMEOUT) as socket:
                    session = LiveSession(post_id, opened=time.monotonic())
                    recorder.live_sessions.append(session)
                    await self.listen(socket, session, until)
            except ConnectionClosed as exc:
                received = exc.rcvd.code if exc.rcvd else None
                recorder.live_failures[f"closed by the server ({received})"] += 1
                recorder.problem("ws closed", f"WebSocket on post {post_id} closed: {exc}")
            except (InvalidHandshake, OSError, TimeoutError) as exc:
                recorder.live_failures[f"connect failed ({type(exc).__name__})"] += 1
                recorder.problem(
                    "ws connect", f"WebSocket on post {post_id}: {type(exc).__name__}: {exc}"
                )
                await asyncio.sleep(1)

    async def listen(self, socket: ClientConnection, session: LiveSession, until: float) -> None:
        """Read events until the hold time is over; signed-in sockets also talk now and then."""
        recorder = self.world.recorder
        leave = min(until, session.opened + self.rng.uniform(20, 60))
        next_message = session.opened + self.rng.uniform(2, 8)
        try:
            while self.world.running and (now := time.monotonic()) < leave:
                wait = min(leave, next_message) - now if self.token else leave - now
                try:
                    # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation.
                    async with asyncio.timeout(max(wait, 0.01)):
                        frame = await socket.recv()
                except TimeoutError:
                    if self.token and time.monotonic() >= next_message:
                        await socket.send(f"soak hello from socket {self.index}")
                        next_message = time.monotonic() + self.rng.uniform(2, 8)
                    continue
                event = json.loads(frame)
                recorder.live_events[event.get("type", "?")] += 1
                if event.get("type") == "comment_created":
                    session.comment_ids.add(event["comment"]["id"])
                elif event.get("type") in ("error", "post_deleted"):
                    recorder.live_failures[f"event {event.get('type')}"] += 1
                    recorder.problem("ws event", f"WebSocket on post {session.post_id} got {event}")
        finally:
            session.closed = time.monotonic()


# --- the run -------------------------------------------------------------------------------------


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
        self.recorder = Recorder()
        self.memory: dict[int, WorkerMemory] = {}
        self.worker_changes: list[str] = []
        self.facts: dict[str, Any] = {}
        self.world: World | None = None
        self.interrupted = False

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

    async def setup_world(self, service: Service, deadline: float) -> World:
        """Sign the accounts in and write the hot posts the WebSocket clients watch."""
        async with httpx.AsyncClient(
            base_url=service.url, timeout=REQUEST_TIMEOUT, trust_env=False
        ) as client:

            async def login(username: str) -> Account:
                answer = await client.post(
                    "/auth/login", data={"username": username, "password": PASSWORD}
                )
                if answer.status_code != 200:
                    raise BenchError(f"login as {username}: {answer.status_code} {answer.text}")
                return Account(username, answer.json()["access_token"])

            accounts = [await login(name) for name in self.usernames[: self.args.accounts]]
            hot_ids, hot_titles = [], []
            for number in range(HOT_POSTS):
                title = f"soak hot post {number} {secrets.token_hex(3)}"
                answer = await client.post(
                    "/posts",
                    json={"title": title, "content": "Watched by the soak's WebSocket clients."},
                    headers={"Authorization": f"Bearer {accounts[0].token}"},
                )
                if answer.status_code != 201:
                    raise BenchError(f"creating a hot post: {answer.status_code} {answer.text}")
                hot_ids.append(answer.json()["id"])
                hot_titles.append(title)
        return World(
            base_url=service.url,
            ws_url=service.ws_url,
            accounts=accounts,
            seeded_ids=self.seeded_ids,
            hot_ids=hot_ids,
            hot_titles=hot_titles,
            deadline=deadline,
            think_seconds=self.args.think_ms / 1000,
            recorder=self.recorder,
        )

    async def traffic(self, service: Service) -> None:
        args = self.args
        # Inside the event loop a signal stops the traffic and cancels this task: an exception
        # raised by a plain signal handler could land in the middle of asyncio's own callbacks
        # and hang the loop.
        loop = asyncio.get_running_loop()
        this_task = asyncio.current_task()
        assert this_task is not None
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.interrupt, this_task)
        world = await self.setup_world(service, deadline=math.inf)
        self.world = world
        started = time.monotonic()
        world.deadline = started + args.duration
        log(
            f"traffic: {args.duration} s, {args.users} virtual users, {args.ws_clients} WebSocket "
            f"clients; start RSS after {args.warmup} s"
        )
        users = [VirtualUser(world, index, args.seed) for index in range(args.users)]
        live = [LiveClient(world, index, args.seed) for index in range(args.ws_clients)]
        # Sockets stay open a little after the last write, so its events count as "must arrive".
        live_until = world.deadline + DELIVERY_MARGIN + 1
        user_tasks = [asyncio.create_task(user.run()) for user in users]
        live_tasks = [asyncio.create_task(client.run(live_until)) for client in live]
        monitor = asyncio.create_task(self.monitor(service, world, started))
        tasks = [*user_tasks, *live_tasks, monitor]
        try:
            await asyncio.gather(*user_tasks)
            self.facts["traffic_seconds"] = time.monotonic() - started
            self.sample_memory(service, "end")
            await asyncio.gather(*live_tasks)
        finally:
            world.running = False
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def monitor(self, service: Service, world: World, started: float) -> None:
        """Poll readiness and metrics like an orchestrator would; sample RSS; watch the workers."""
        polls = {"/health/ready": READY_EVERY, "/metrics": METRICS_EVERY}
        due = dict.fromkeys(polls, started)
        next_sample = started
        start_taken = False
        async with httpx.AsyncClient(
            base_url=service.url, timeout=REQUEST_TIMEOUT, trust_env=False
        ) as client:
            while not world.over():
                for path, every in polls.items():
                    if time.monotonic() >= due[path]:
                        due[path] += every
                        await self.poll(client, path)
                now = time.monotonic()
                if not start_taken and now - started >= self.args.warmup:
                    self.sample_memory(service, "start")
                    start_taken = True
                if now >= next_sample:
                    next_sample += SAMPLE_EVERY
                    self.sample_memory(service, "sample")
                    self.progress(now - started)
                await asyncio.sleep(1)

    async def poll(self, client: httpx.AsyncClient, path: str) -> None:
        name = f"GET {path}"
        begun = time.perf_counter()
        try:
            response = await client.get(path)
        except httpx.HTTPError as exc:
            self.recorder.transport_error(name, exc)
            return
        self.recorder.record(name, response, time.perf_counter() - begun, OK)

    def interrupt(self, traffic: asyncio.Task[None]) -> None:
        """Ctrl-C or SIGTERM during the traffic: every task stops, then the clean-up runs."""
        self.interrupted = True
        if self.world is not None:
            self.world.running = False  # a task that swallowed its cancellation stops anyway
        traffic.cancel()

    def progress(self, elapsed: float) -> None:
        statuses = self.recorder.statuses()
        server_errors = sum(n for status, n in statuses.items() if status >= 500)
        rss = ", ".join(f"{m.samples[-1]:.1f}" for m in self.memory.values() if m.samples)
        log(
            f"  {elapsed:4.0f} s: {sum(statuses.values()):,} requests, 5xx {server_errors}, "
            f"unexpected {sum(self.recorder.unexpected.values())}, transport errors "
            f"{sum(self.recorder.transport_errors.values())}, worker RSS {rss} MB"
        )

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
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        try:
            asyncio.run(self.traffic(self.service))
        except asyncio.CancelledError:
            raise KeyboardInterrupt from None
        finally:
            exit_on_sigterm()  # closing the loop reset the signals it handled
        if self.interrupted:
            raise KeyboardInterrupt
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
        self.facts["generator_cpu"] = (cpu_after.ru_utime + cpu_after.ru_stime) - (
            cpu_before.ru_utime + cpu_before.ru_stime
        )
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
        recorder = self.recorder
        statuses = recorder.statuses()
        total = sum(statuses.values())
        seconds = self.facts.get("traffic_seconds", float("nan"))
        by_class = Counter(f"{status // 100}xx" for status in statuses.elements())
        server_errors = sum(n for status, n in statuses.items() if status >= 500)
        unexpected = sum(recorder.unexpected.values())
        transport = sum(recorder.transport_errors.values())
        latencies = recorder.all_latencies()
        expected_events, missed_events = recorder.missed_comment_events()
        sessions = recorder.live_sessions
        workers = sorted(self.memory.values(), key=lambda m: m.pid)

        failures = []
        if server_errors:
            failures.append(f"{server_errors} answers were 5xx")
        if unexpected:
            failures.append(f"{unexpected} answers had a status their call cannot answer")
        if transport:
            failures.append(f"{transport} requests failed without an answer")
        if recorder.stale_reads:
            failures.append(f"{recorder.stale_reads} stale reads after a write")
        if recorder.replay_mismatches:
            failures.append(f"{recorder.replay_mismatches} idempotent replays differed")
        if missed_events:
            failures.append(f"{missed_events} comment events did not reach an open socket")
        if sum(recorder.live_failures.values()):
            failures.append(f"WebSocket failures: {dict(recorder.live_failures)}")
        if args.ws_clients and not recorder.live_events.get("comment_created"):
            failures.append("no WebSocket client received a comment event")
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
        if total == 0:
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
            f"- traffic: {seconds:.0f} s, {args.users} virtual users (a quarter on a fresh "
            f"connection per request), pauses of 0-{2 * args.think_ms:g} ms, {args.ws_clients} "
            f"WebSocket clients (reconnecting every 20-60 s, half signed in and talking); RSS "
            f"start after {args.warmup} s; load generator CPU "
            f"{self.facts.get('generator_cpu', float('nan')):.0f} s (one process)",
            "",
            "## Figures",
            "",
            f"- requests: {total:,} ({total / seconds:.0f}/s); "
            + ", ".join(f"{cls} {n:,}" for cls, n in sorted(by_class.items())),
            f"- 5xx: {server_errors}; unexpected statuses: {unexpected}; transport errors: "
            f"{transport}",
            f"- latency: p50 {percentile(latencies, 0.5):.1f} ms, p99 "
            f"{percentile(latencies, 0.99):.1f} ms, max {percentile(latencies, 1.0):.1f} ms",
            f"- reads right after a write, on a new connection: {recorder.fresh_checks:,}, stale "
            f"{recorder.stale_reads}; idempotent replays: {recorder.replays}, different "
            f"{recorder.replay_mismatches}",
            f"- WebSocket: {len(sessions)} sessions, events received "
            f"{sum(recorder.live_events.values()):,} ("
            + ", ".join(f"{kind} {n:,}" for kind, n in recorder.live_events.most_common())
            + f"); comment events due to an open socket {expected_events:,}, missed "
            f"{missed_events}; failures {dict(recorder.live_failures) or 0}",
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
            "| call | requests | statuses | p50 ms | p99 ms |",
            "| --- | ---: | --- | ---: | ---: |",
        ]
        for name, stats in sorted(
            self.recorder.calls.items(), key=lambda i: -len(i[1].latencies_ms)
        ):
            ordered = sorted(stats.latencies_ms)
            codes = ", ".join(f"{code}: {n:,}" for code, n in sorted(stats.statuses.items()))
            lines.append(
                f"| `{name}` | {len(ordered):,} | {codes} | {percentile(ordered, 0.5):.1f} | "
                f"{percentile(ordered, 0.99):.1f} |"
            )
        if recorder.problems:
            lines += ["", "## First problems seen", ""] + [f"- {p}" for p in recorder.problems]
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
