"""`make profile`: where the CPU of one request goes, layer by layer.

In one process, without an HTTP server or a load generator: an ASGI driver sends requests
straight into the app (the service's `main.create_app`, bench/floor.py, bench/ceiling.py) with
8 in flight, on the `blog_bench` database (prepared as `make bench` does) and Redis db 5, and
measures the process's CPU time (user + system) per request. Each workload is measured for:

- the service as `make bench` runs it (production settings, PostgreSQL, Redis, rate limits on
  but never reached, JSON access log; the log goes to /dev/null, formatted all the same);
- the same with ONE layer switched off, through a setting where there is one (rate limits:
  RATE_LIMIT_ENABLED=false; the access log: LOG_LEVEL=WARNING; the Host check: ALLOWED_HOSTS=*)
  and otherwise by giving the edge layer (edge.EdgeMiddleware) a `leave_out` before the app
  first runs (metrics + access log, security headers, body size limit): the difference is that
  layer's cost;
- the edge layer left out of `app.user_middleware` altogether: what is left of it once its parts
  above are subtracted is its core (request id + timing, trailing slash, client address, its one
  send wrapper);
- every layer above off at once: what the routes, dependencies, crud, the ORM and the cache cost;
- the floor (FastAPI routes + asyncpg) and the ceiling (Starlette + asyncpg), for reference.

Rounds alternate the variants (each round opens each app's lifespan, warms it up, measures,
closes it); the figure is the median of the rounds. Then one cProfile run of the production
variant per workload gives the CPU's split by module (own time, grouped: the app's modules,
FastAPI, Starlette, pydantic, SQLAlchemy, asyncpg, redis, logging, asyncio...), scaled to the
unprofiled CPU time per request. What this leaves out is the HTTP server (uvicorn + httptools
parsing and writing): compare with the CPU ms/req of `make bench`.

Run with the project's venv: `.venv/bin/python bench/layers.py [--requests 1000] [--rounds 3]`.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import itertools
import logging
import os
import pstats
import re
import secrets
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import BENCH, ROOT, BenchError, argument_parser, flush_redis, log, run_script, run_sql

WORKLOADS = {
    "by_id_off": "GET /posts/{id}, cache off",
    "by_id_on": "GET /posts/{id}, cache hits",
    "first_page": "GET /posts?limit=10",
    "create": "POST /posts (signed in)",
}


@dataclass(frozen=True)
class Layer:
    """One variant of the service: a layer switched off."""

    label: str
    overrides: dict[str, Any] = field(default_factory=dict)  # settings
    leave_out: tuple[str, ...] = ()  # parts of the edge layer (EdgeMiddleware's `leave_out`)
    without_edge: bool = False  # EdgeMiddleware left out of app.user_middleware
    log_level: str = "INFO"
    within: str = ""  # the label of the layer this one is a part of


EDGE = "the whole edge layer (EdgeMiddleware left out)"
METRICS = "metrics + access log (edge)"
LAYERS = [
    Layer("rate limits (RATE_LIMIT_ENABLED=false)", {"rate_limit_enabled": False}),
    Layer("access log (LOG_LEVEL=WARNING)", log_level="WARNING", within=METRICS),
    Layer(METRICS, leave_out=("metrics_and_access_log",), within=EDGE),
    Layer("security headers (edge)", leave_out=("security_headers",), within=EDGE),
    Layer("body size limit (edge)", leave_out=("body_limit",), within=EDGE),
    Layer("Host check (edge; ALLOWED_HOSTS=*)", {"allowed_hosts": ["*"]}, within=EDGE),
    Layer(EDGE, without_edge=True),
]
CONCURRENCY = 8
ID_SET = 500  # ids read at random; every one is read once in the warm-up (cache hits: all hits)
CREATE_PREFIX = "[bench] layers"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argument_parser("bench/layers.py", __doc__)
    parser.add_argument("--requests", type=int, default=1000, help="measured per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=300, help="requests before each round")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--pg", default="postgresql://root@127.0.0.1:5432", help="server URL")
    parser.add_argument("--db", default="blog_bench", help="`make bench`'s database")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/5", help="flushed at start")
    parser.add_argument(
        "--only",
        default="",
        help=f"comma-separated workloads (default all: {', '.join(WORKLOADS)})",
    )
    parser.add_argument("--top", type=int, default=25, help="functions listed per cProfile run")
    parser.add_argument("--no-cprofile", action="store_true", help="the layer table only")
    args = parser.parse_args(argv)
    args.workloads = [w.strip() for w in args.only.split(",") if w.strip()] or list(WORKLOADS)
    unknown = set(args.workloads) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads {sorted(unknown)}")
    if min(args.requests, args.rounds, args.concurrency) < 1 or args.warmup < 0:
        parser.error("requests, rounds and concurrency must be 1 or more")
    return args


# --- the ASGI driver ---------------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    query: str = ""
    body: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


async def call(app: Any, request: Request, port: int) -> int:
    """One request through the app as uvicorn would send it; the response status."""
    headers = [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"layers"), *request.headers]
    if request.body:
        headers.append((b"content-length", str(len(request.body)).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": "http",
        "path": request.path,
        "raw_path": request.path.encode(),
        "query_string": request.query.encode(),
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", port),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    finished = asyncio.Event()
    sent_body = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body" and not message.get("more_body"):
            finished.set()

    await app(scope, receive, send)
    finished.set()
    return status


async def drive(
    app: Any, make: Callable[[int], Request], count: int, concurrency: int
) -> tuple[float, Counter[int]]:
    """`count` requests, `concurrency` in flight; (CPU seconds of this process, statuses)."""
    numbers = itertools.count()
    statuses: Counter[int] = Counter()

    async def worker(slot: int) -> None:
        while (n := next(numbers)) < count:
            statuses[await call(app, make(n), 40000 + slot)] += 1

    started = time.process_time()
    await asyncio.gather(*(worker(slot) for slot in range(concurrency)))
    return time.process_time() - started, statuses


# --- the apps ----------------------------------------------------------------------------------


@dataclass
class Variant:
    label: str
    build: Callable[[int], Any]  # cache TTL -> a new ASGI app
    log_level: str = "INFO"


def service_variant(label: str, layer: Layer) -> Variant:
    def build(cache_ttl: int) -> Any:
        from starlette.middleware import Middleware

        import main
        from config import Settings
        from edge import EdgeMiddleware

        app = main.create_app(Settings(cache_ttl_seconds=cache_ttl, **layer.overrides))
        edges = [m for m in app.user_middleware if m.cls is EdgeMiddleware]
        if len(edges) != 1:
            raise BenchError(f"{label}: the app has {len(edges)} EdgeMiddleware, not one")
        [edge] = edges
        if layer.without_edge:
            app.user_middleware.remove(edge)
        elif layer.leave_out:
            kwargs: dict[str, Any] = {**edge.kwargs, "leave_out": layer.leave_out}
            position = app.user_middleware.index(edge)
            app.user_middleware[position] = Middleware(EdgeMiddleware, *edge.args, **kwargs)
        return app

    return Variant(label, build, layer.log_level)


def reference_variant(label: str, module: str) -> Variant:
    def build(_cache_ttl: int) -> Any:
        return __import__(module).app

    return Variant(label, build)


DEVNULL = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process


def configure_logs(level: str) -> None:
    """The service's logging (JSON to a stream), written to /dev/null: formatted all the same."""
    from logging_setup import configure_logging

    configure_logging(level, "json")
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(DEVNULL)


# --- measuring ---------------------------------------------------------------------------------


class Layers:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dsn = f"{args.pg.rstrip('/')}/{args.db}"
        self.tag = secrets.token_hex(3)
        self.serial = itertools.count()
        self.ids: list[int] = []
        self.token = ""
        # workload -> variant label -> CPU µs per request, one per round
        self.figures: dict[str, dict[str, list[float]]] = {}
        self.errors: list[str] = []

    def prepare(self) -> None:
        """`make bench`'s database (created and seeded when missing) and environment."""
        import run

        bench = run.Bench(run.parse_args(["--pg", self.args.pg, "--db", self.args.db]))
        bench.args.redis = self.args.redis
        bench.prepare_database()
        bench.gather_facts()
        self.ids = bench.ids[:ID_SET]
        env = bench.service_env(300)
        env["BENCH_DATABASE_URL"] = self.dsn
        os.environ.clear()
        os.environ.update(env)
        for path in (str(ROOT), str(BENCH)):
            if path not in sys.path:
                sys.path.insert(0, path)
        user_id = run_sql(
            self.dsn,
            lambda c: c.fetchval(
                "SELECT id FROM users WHERE username = $1", bench.facts["username"]
            ),
        )
        import main  # noqa: F401 - builds the environment's app and logging now, not mid-run
        from security import create_access_token

        self.token = create_access_token(user_id, env["SECRET_KEY"], 240)[0]
        self.bench = bench
        flush_redis(self.args.redis)

    def variants(self) -> list[Variant]:
        everything = Layer(
            "all of the above off",
            {k: v for layer in LAYERS for k, v in layer.overrides.items()},
            without_edge=True,
            log_level="WARNING",
        )
        return [
            service_variant("service, production settings", Layer("production")),
            *(service_variant(f"- {layer.label}", layer) for layer in LAYERS),
            service_variant("service, all of the above off", everything),
            reference_variant("floor (bench/floor.py)", "floor"),
            reference_variant("ceiling (bench/ceiling.py)", "ceiling"),
        ]

    def request_maker(self, workload: str) -> Callable[[int], Request]:
        ids = self.ids
        if workload in ("by_id_off", "by_id_on"):
            return lambda n: Request("GET", f"/posts/{ids[(n * 7919) % len(ids)]}")
        if workload == "first_page":
            return lambda _n: Request("GET", "/posts", "limit=10")
        auth = [
            (b"authorization", f"Bearer {self.token}".encode()),
            (b"content-type", b"application/json"),
        ]
        body = "Benchmark post body: the quick brown fox jumps over the lazy dog. " * 8

        def create(_n: int) -> Request:
            title = f"{CREATE_PREFIX} {self.tag} {next(self.serial)}"  # unique in the whole run
            payload = f'{{"title": "{title}", "content": "{body}", "published": true}}'
            return Request("POST", "/posts", body=payload.encode(), headers=list(auth))

        return create

    async def measure_once(
        self, variant: Variant, workload: str, profile: cProfile.Profile | None = None
    ) -> float:
        """CPU µs per request of one variant on one workload (a fresh app and lifespan)."""
        args = self.args
        configure_logs(variant.log_level)
        app = variant.build(0 if workload == "by_id_off" else 300)
        make = self.request_maker(workload)
        async with app.router.lifespan_context(app):
            if workload.startswith("by_id"):  # every id once: cache filled, database buffers warm
                await drive(
                    app, lambda n: Request("GET", f"/posts/{self.ids[n]}"), len(self.ids), 8
                )
            await drive(app, make, args.warmup, args.concurrency)
            if profile is not None:
                profile.enable()
            cpu, statuses = await drive(app, make, args.requests, args.concurrency)
            if profile is not None:
                profile.disable()
        bad = {code: n for code, n in statuses.items() if not 200 <= code < 300}
        if bad:
            self.errors.append(f"{variant.label}, {workload}: statuses {dict(statuses)}")
        return 1e6 * cpu / args.requests

    async def measure(self) -> None:
        args = self.args
        variants = self.variants()
        for workload in args.workloads:
            log(f"\n## {WORKLOADS[workload]}; variants in the order of the report's table")
            figures = self.figures.setdefault(workload, {v.label: [] for v in variants})
            for round_number in range(1, args.rounds + 1):
                for variant in variants:
                    if workload == "by_id_on" and not variant.label.startswith(("service", "-")):
                        continue  # no cache in the floor and the ceiling: by_id_off's figures
                    figures[variant.label].append(await self.measure_once(variant, workload))
                values = [f"{f[-1]:.0f}" for f in figures.values() if len(f) == round_number]
                log(f"  round {round_number}, µs/request: {' '.join(values)}")
            if workload == "create":
                await asyncio.to_thread(self.bench.delete_bench_posts)

    async def profile(self, workload: str) -> str:
        """Own CPU time by module group for the production variant, from cProfile."""
        variant = self.variants()[0]
        # CPU time, not wall time: on a busy machine a preempted call would look expensive.
        profiler = cProfile.Profile(time.process_time)
        await self.measure_once(variant, workload, profiler)
        if workload == "create":
            await asyncio.to_thread(self.bench.delete_bench_posts)
        stats = pstats.Stats(profiler)
        raw: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
        by_group: Counter[str] = Counter()
        by_function: Counter[str] = Counter()
        for (file, line, name), (_cc, _nc, own, _inclusive, _callers) in raw.items():
            by_group[group_of(file, name)] += own
            by_function[f"{name} ({short_path(file)}:{line})"] += own
        total = sum(by_group.values())
        production = statistics.median(
            self.figures.get(workload, {}).get(variant.label, []) or [float("nan")]
        )
        lines = [
            f"cProfile (CPU time), {self.args.requests} requests of the production variant; own "
            f"time by module (µs/request scaled to the unprofiled {production:.0f} µs):",
        ]
        for group, seconds in by_group.most_common():
            share = seconds / total
            if share < 0.005:
                continue
            lines.append(f"  {100 * share:5.1f}%  {share * production:6.0f} µs  {group}")
        lines.append(f"top {self.args.top} functions by own time:")
        for function, seconds in by_function.most_common(self.args.top):
            lines.append(f"  {100 * seconds / total:5.1f}%  {function}")
        return "\n".join(lines)

    def report(self, profiles: dict[str, str]) -> str:
        args = self.args
        lines = [
            "# Where the CPU of one request goes (bench/layers.py)",
            "",
            f"In-process ASGI driver, {args.concurrency} requests in flight, median of "
            f"{args.rounds} rounds of {args.requests} requests (after {args.warmup} warm-up "
            f"requests each), CPU time of the process (user + system) per request, in µs. "
            f"Load average now: {os.getloadavg()[0]:.2f} (the CPU time per request moves far "
            "less with other load than throughput does). No HTTP server: uvicorn's share is the "
            "rest of `make bench`'s CPU ms/req.",
        ]
        for workload, figures in self.figures.items():
            med = {label: statistics.median(v) for label, v in figures.items() if v}
            production = med["service, production settings"]
            lines += [
                "",
                f"## {WORKLOADS[workload]}",
                "",
                "| variant | µs/request | layer's cost |",
            ]
            lines.append("| --- | ---: | ---: |")
            for label, value in med.items():
                cost = ""
                if label.startswith("-"):
                    saved = production - value
                    cost = f"{saved:+.0f} µs ({100 * saved / production:.0f} %)"
                lines.append(f"| {label} | {value:.0f} | {cost} |")
            # layer -> (its cost, the layer it is a part of)
            costs = {
                layer.label: (production - med[f"- {layer.label}"], layer.within)
                for layer in LAYERS
                if f"- {layer.label}" in med
            }
            if EDGE in costs:
                edge = costs[EDGE][0]
                parts = sum(cost for cost, within in costs.values() if within == EDGE)
                lines += [
                    "",
                    f"The edge layer's core (request id + timing, trailing slash, client "
                    f"address, its send wrapper): the whole edge {edge:.0f} µs minus its parts "
                    f"above {parts:.0f} = {edge - parts:.0f} µs.",
                ]
            bare = med.get("service, all of the above off")
            floor = med.get("floor (bench/floor.py)")
            ceiling = med.get("ceiling (bench/ceiling.py)")
            if workload == "by_id_on" and bare is not None:
                off = self.figures.get("by_id_off", {})
                floor = statistics.median(off.get("floor (bench/floor.py)") or [float("nan")])
                ceiling = statistics.median(off.get("ceiling (bench/ceiling.py)") or [float("nan")])
                split = (
                    f"Split: a cache hit with every layer off {bare:.0f} µs + the layers "
                    f"{production - bare:.0f} = {production:.0f} µs"
                )
                if off:  # by_id_off ran: the references' figures for the same request
                    split += (
                        f"; the floor reads the database for the same request in {floor:.0f} "
                        f"µs, the ceiling in {ceiling:.0f} µs"
                    )
                lines += ["", split + "."]
            elif bare is not None and floor is not None and ceiling is not None:
                layers = production - bare
                singles = sum(cost for cost, within in costs.values() if not within)
                lines += [
                    "",
                    f"Split: ceiling {ceiling:.0f} µs (Starlette, asyncpg, orjson: the database "
                    f"round trip's client side) + FastAPI over Starlette {floor - ceiling:.0f} "
                    f"(the floor) + the service's routes, dependencies, crud, ORM and cache over "
                    f"the floor {bare - floor:.0f} + the layers {layers:.0f} (one at a time: "
                    f"{singles:.0f}) = {production:.0f} µs.",
                ]
            if workload in profiles:
                lines += ["", "```", profiles[workload], "```"]
        if self.errors:
            lines += ["", "Non-2xx answers (the figures of those rows mean little):"]
            lines += [f"- {error}" for error in self.errors]
        return "\n".join(lines) + "\n"

    def run(self) -> int:
        self.prepare()
        asyncio.run(self.measure())
        profiles: dict[str, str] = {}
        if not self.args.no_cprofile:
            for workload in self.args.workloads:
                profiles[workload] = asyncio.run(self.profile(workload))
        report = self.report(profiles)
        log("\n" + report)
        return 1 if self.errors else 0

    def close(self) -> None:
        bench = getattr(self, "bench", None)
        if bench is not None:
            bench.delete_bench_posts()


# --- cProfile grouping -------------------------------------------------------------------------

APP_MODULES = {p.stem for p in ROOT.glob("*.py")}


def short_path(file: str) -> str:
    for marker in ("site-packages/", str(ROOT) + "/", "/lib/python3.11/", "/lib/python3"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


C_OWNER = re.compile(r"(?:of '|built-in method )_?([A-Za-z]\w*)")
C_GROUPS = {
    "socket": "system calls: socket send/recv",
    "select": "system calls: epoll",
    "asyncio": "stdlib: asyncio",
    "pydantic_core": "pydantic_core",
    "orjson": "orjson",
    "greenlet": "sqlalchemy",  # its async bridge
    "hiredis": "redis",
}


def group_of(file: str, name: str) -> str:
    """A profile entry's group: `app: <module>`, a package name, or a stdlib module."""
    if file == "~":  # a C function: grouped by the type or module that owns it
        match = C_OWNER.search(name)
        owner = match.group(1) if match else ""
        return C_GROUPS.get(owner, "C builtins (str, dict, isinstance, ...)")
    if file.startswith("<"):
        return "stdlib: <frozen> modules"
    path = Path(file)
    if str(BENCH) in file:
        return "the driver (bench/layers.py) and bench apps"
    if str(ROOT) in file and "site-packages" not in file:
        relative = path.relative_to(ROOT)
        if relative.parts[0] == "routes" or path.stem in APP_MODULES:
            return f"app: {relative.with_suffix('')}"
    short = short_path(file)
    top = short.split("/", 1)[0].removesuffix(".py")
    if "site-packages" in file:
        return top
    return f"stdlib: {top}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    layers = Layers(args)
    return run_script(layers.run, layers.close)


if __name__ == "__main__":
    sys.exit(main())
