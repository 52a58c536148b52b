"""Observability: /metrics by route template, domain counters, the JSON access log, and one scrape
summing every worker of a real `uvicorn --workers 2`."""

from __future__ import annotations

import concurrent.futures
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

import observability
from logging_setup import configure_logging
from request_id import request_id_var
from tests.conftest import ROOT, TEST_SECRET, alembic_upgrade, create_post, free_port
from tests.worker_processes import SERVER_FLAGS

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
REQUESTS = "http_requests_total"
TEMPLATE = "/posts/{post_id}"


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


@pytest.fixture(autouse=True)
def fresh_scrapes(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests compare scrapes a moment apart: no scrape cache (test_scrapes_are_cached)."""
    monkeypatch.setattr(observability, "SCRAPE_CACHE_SECONDS", 0.0)


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def label_values(samples: Samples, label: str) -> set[str]:
    return {dict(labels)[label] for _, labels in samples if label in dict(labels)}


# --- metrics through HTTP ------------------------------------------------------------------------


async def test_requests_are_counted_by_route_template(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    first = await create_post(client, user_headers, "Observed one")
    second = await create_post(client, user_headers, "Observed two")
    before = await scrape(client)
    for post in (first, second):
        assert (await client.get(f"/posts/{post['id']}")).status_code == 200
    assert (await client.get("/posts/987654")).status_code == 404
    after = await scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    ok = {"method": "GET", "route": TEMPLATE, "status": "200"}
    assert delta(REQUESTS, **ok) == 2
    assert delta(REQUESTS, method="GET", route=TEMPLATE, status="404") == 1
    # One series for the template, none per concrete path.
    routes = label_values(after, "route")
    assert TEMPLATE in routes
    assert not {route for route in routes if route.startswith("/posts/") and "{" not in route}
    # The latency histogram: every bucket, cumulative, for the same labels.
    histogram = "http_request_duration_seconds"
    bounds = {
        dict(labels)["le"]
        for name, labels in after
        if name == f"{histogram}_bucket" and {**dict(labels), "le": ""} == {**ok, "le": ""}
    }
    assert bounds == {str(bound) for bound in observability.BUCKETS} | {"+Inf"}
    assert delta(f"{histogram}_bucket", **ok, le="+Inf") == 2
    assert delta(f"{histogram}_count", **ok) == 2
    assert delta(f"{histogram}_sum", **ok) > 0
    assert value(after, f"{histogram}_bucket", **ok, le=str(observability.BUCKETS[0])) <= value(
        after, f"{histogram}_bucket", **ok, le=str(observability.BUCKETS[-1])
    )


async def test_unknown_paths_and_methods_create_no_series(client: httpx.AsyncClient) -> None:
    marker = uuid.uuid4().hex
    before = await scrape(client)
    assert (await client.get(f"/no-such-page-{marker}")).status_code == 404
    assert (await client.request(f"BREW{marker[:6].upper()}", "/")).status_code == 405
    after = await scrape(client)
    assert marker not in json.dumps(sorted(str(key) for key in after))
    assert not {method for method in label_values(after, "method") if method.startswith("BREW")}
    unmatched = {"method": "GET", "route": observability.UNMATCHED, "status": "404"}
    assert value(after, REQUESTS, **unmatched) - value(before, REQUESTS, **unmatched) == 1
    other = {"method": "OTHER", "route": "/", "status": "405"}
    assert value(after, REQUESTS, **other) - value(before, REQUESTS, **other) == 1


@pytest.mark.parametrize("settings_overrides", [{"rate_limit_read": "1/minute"}])
async def test_answers_given_before_routing_are_labelled_by_template(
    client: httpx.AsyncClient,
) -> None:
    """429 (rate limit) and 413 (body size) come from middleware, before the router runs."""
    before = await scrape(client)
    assert (await client.get("/posts/5")).status_code == 404
    assert (await client.get("/posts/5")).status_code == 429
    too_big = b"x" * (1024 * 1024 + 1)
    response = await client.post("/posts", content=too_big, headers={"Content-Type": "text/plain"})
    assert response.status_code == 413
    after = await scrape(client)
    for name, labels in [
        (REQUESTS, {"method": "GET", "route": TEMPLATE, "status": "429"}),
        (REQUESTS, {"method": "POST", "route": "/posts", "status": "413"}),
        ("blog_rate_limited_total", {"category": "read"}),
    ]:
        assert value(after, name, **labels) - value(before, name, **labels) == 1, (name, labels)


async def test_domain_counters_and_gauges_are_exposed(client: httpx.AsyncClient) -> None:
    before = await scrape(client)
    observability.record_cache(hit=True)
    observability.record_cache(hit=True)
    observability.record_cache(hit=False)
    observability.record_rate_limited("write")
    observability.record_redis_fallback("observability-test")
    observability.websocket_opened()
    observability.websocket_opened()
    observability.websocket_closed()
    try:
        after = await scrape(client)
    finally:
        observability.websocket_closed()
    for name, labels, change in [
        ("blog_cache_hits_total", {}, 2),
        ("blog_cache_misses_total", {}, 1),
        ("blog_rate_limited_total", {"category": "write"}, 1),
        ("blog_redis_fallbacks_total", {"component": "observability-test"}, 1),
        ("blog_websocket_connections", {}, 1),
    ]:
        assert value(after, name, **labels) - value(before, name, **labels) == change, name
    # Every limit category is exposed from the start, at zero if need be.
    assert {"read", "write", "login"} <= label_values(after, "category")


@pytest.mark.parametrize("settings_overrides", [{"redis_url": "redis://127.0.0.1:1/0"}])
async def test_redis_fallbacks_are_counted_through_the_backend(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    backend = app.state.redis
    assert observability.record_redis_fallback in backend.fallback_listeners
    before = await scrape(client)

    async def ping(redis: Any) -> str:
        await redis.ping()
        return "redis"

    async def fallback() -> str:
        return "fallback"

    backend.mark_ok()  # the hub's listener may have found the outage already; try Redis now
    assert await backend.call("observability-probe", ping, fallback) == "fallback"
    after = await scrape(client)
    labels = {"component": "observability-probe"}
    name = "blog_redis_fallbacks_total"
    assert value(after, name, **labels) - value(before, name, **labels) == 1


# --- the access log ------------------------------------------------------------------------------


@pytest.fixture
def log_output() -> Iterator[Any]:
    """`configure_logging` as the service runs it, writing to a buffer; restored afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    names = ("uvicorn", "uvicorn.error", "uvicorn.access")
    saved_loggers = {
        name: (logging.getLogger(name).handlers[:], logging.getLogger(name).propagate)
        for name in names
    }
    saved_disabled = logging.getLogger("uvicorn.access").disabled
    buffer = io.StringIO()

    def configure(log_format: str, instance: str | None = None) -> io.StringIO:
        configure_logging("INFO", log_format, instance)
        [handler] = root.handlers
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(buffer)  # instead of stderr
        return buffer

    try:
        yield configure
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        for name, (handlers, propagate) in saved_loggers.items():
            logging.getLogger(name).handlers[:] = handlers
            logging.getLogger(name).propagate = propagate
        logging.getLogger("uvicorn.access").disabled = saved_disabled


def access_lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]
    return [record for record in records if record["logger"] == "blog.access"]


async def test_access_log_is_one_json_line_per_request(
    client: httpx.AsyncClient, user_headers: dict[str, str], log_output: Any
) -> None:
    me = (await client.get("/users/me", headers=user_headers)).json()
    post = await create_post(client, user_headers, "Logged post")
    buffer = log_output("json")

    signed_in = await client.get(
        f"/posts/{post['id']}", headers={**user_headers, "X-Request-ID": "obs-req.1"}
    )
    assert signed_in.status_code == 200
    anonymous = await client.get("/posts/424242")
    assert anonymous.status_code == 404

    lines = access_lines(buffer)  # every line of the buffer parsed as JSON
    assert len(lines) == 2
    first, second = lines
    assert first["request_id"] == "obs-req.1" == signed_in.headers["X-Request-ID"]
    assert first["method"] == "GET"
    assert first["route"] == TEMPLATE
    assert first["path"] == f"/posts/{post['id']}"
    assert first["status"] == 200
    assert isinstance(first["duration_ms"], float) and first["duration_ms"] >= 0
    assert first["user_id"] == me["id"]
    assert first["client_ip"] == "127.0.0.1"
    assert first["level"] == "INFO" and first["time"]
    assert second["request_id"] == anonymous.headers["X-Request-ID"]
    assert second["status"] == 404 and second["user_id"] is None
    assert second["route"] == TEMPLATE and second["path"] == "/posts/424242"
    # The message names the template; the path is written once, in `path`.
    assert second["message"].startswith(f"GET {TEMPLATE} 404 ")
    assert "424242" not in second["message"]


async def test_a_long_path_is_logged_once_and_capped(
    client: httpx.AsyncClient, log_output: Any
) -> None:
    buffer = log_output("json")
    long_path = "/x" * 30_000  # a 60 KB path
    assert (await client.get(long_path)).status_code == 404
    [line] = [line for line in buffer.getvalue().splitlines() if "blog.access" in line]
    assert len(line) < 2_000, len(line)  # not 60 KB, let alone twice
    [record] = access_lines(io.StringIO(line))
    assert record["path"] == long_path[:1024] + "...[58976 more]"
    assert record["message"].startswith("GET <unmatched> 404 ")


async def test_access_log_in_text_format_is_for_people(
    client: httpx.AsyncClient, log_output: Any
) -> None:
    buffer = log_output("text")
    response = await client.get("/", headers={"X-Request-ID": "text-format-1"})
    assert response.status_code == 200
    [line] = [line for line in buffer.getvalue().splitlines() if "blog.access" in line]
    assert "[text-format-1]" in line and "GET / 200" in line and line.endswith("ms")
    assert not line.startswith("{")


@pytest.mark.parametrize("log_format", ["json", "text"])
async def test_every_log_line_names_its_instance(
    client: httpx.AsyncClient, log_output: Any, log_format: str
) -> None:
    """INSTANCE_ID (default: the host name) is in every line, so the logs of several
    instances behind a load balancer can be told apart once collected."""
    buffer = log_output(log_format, "api-2")
    assert (await client.get("/")).status_code == 200
    logging.getLogger("blog.other").warning("something else")
    lines = buffer.getvalue().splitlines()
    assert len(lines) >= 2
    if log_format == "json":
        assert {json.loads(line)["instance"] for line in lines} == {"api-2"}
    else:
        assert all(" api-2 " in line for line in lines)


# --- multiprocess bookkeeping --------------------------------------------------------------------


def test_sweep_drops_live_gauges_of_dead_workers_only(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)
    files = {
        "gauge_livesum": [dead.pid, os.getpid()],
        "counter": [dead.pid],
        "histogram": [dead.pid],
    }
    for prefix, pids in files.items():
        for pid in pids:
            (tmp_path / f"{prefix}_{pid}.db").write_bytes(b"")
    observability.sweep_dead_workers(str(tmp_path))
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [
            f"counter_{dead.pid}.db",
            f"histogram_{dead.pid}.db",
            f"gauge_livesum_{os.getpid()}.db",
        ]
    )


# --- a real server with two worker processes -----------------------------------------------------


def server_env(tmp_path: Path, mode: str) -> dict[str, str]:
    database = tmp_path / "blog.db"
    alembic_upgrade(f"sqlite+aiosqlite:///{database}")
    env = {
        key: value
        for key, value in os.environ.items()
        if key.upper() not in ("PROMETHEUS_MULTIPROC_DIR", "WEB_CONCURRENCY")
    }
    env.update(
        DATABASE_URL=f"sqlite+aiosqlite:///{database}",
        SECRET_KEY=TEST_SECRET,
        LOG_LEVEL="INFO",
        LOG_FORMAT="json",
        RATE_LIMIT_ENABLED="false",
    )
    env.pop("REDIS_URL", None)
    if mode == "explicit":
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "metrics")
    else:  # nothing configured: the workers agree on a directory of their own
        (tmp_path / "tmp").mkdir()
        env["TMPDIR"] = str(tmp_path / "tmp")
    return env


def wait_for_workers(log: Path, process: subprocess.Popen[bytes], count: int) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if log.read_text().count("Application startup complete") >= count:
            return
        assert process.poll() is None, log.read_text()
        time.sleep(0.1)
    raise AssertionError(f"workers did not start:\n{log.read_text()}")


def per_worker_counts(directory: Path) -> dict[str, float]:
    """Requests to `/` recorded in each worker's own file."""
    counts = {}
    for path in directory.glob("counter_*.db"):
        for metric in MultiProcessCollector.merge([str(path)]):  # type: ignore[no-untyped-call]
            for sample in metric.samples:
                if sample.name == REQUESTS and sample.labels.get("route") == "/":
                    counts[path.name] = sample.value
    return counts


def metrics_directory(tmp_path: Path, mode: str) -> Path:
    if mode == "explicit":
        return tmp_path / "metrics"
    [directory] = (tmp_path / "tmp").glob("blog-api-metrics*/*")
    return directory


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["auto", "explicit"])
def test_one_scrape_covers_every_worker(tmp_path: Path, mode: str) -> None:
    port = free_port()
    log = tmp_path / "server.log"
    base = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "uvicorn", "main:app", "--workers", "2", "--port", str(port)),
            *SERVER_FLAGS,
        ],
        cwd=ROOT,
        env=server_env(tmp_path, mode),
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        start_new_session=True,
    )
    try:
        wait_for_workers(log, process, 2)

        def hit(_: int) -> int:
            # A client per request: a new connection each time, so both workers take some.
            return httpx.get(f"{base}/", timeout=10).status_code

        sent = 0
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            for _ in range(5):  # more rounds only if one worker happened to take all of them
                assert set(pool.map(hit, range(40))) == {200}
                sent += 40
                if (
                    len(
                        [
                            n
                            for n in per_worker_counts(metrics_directory(tmp_path, mode)).values()
                            if n
                        ]
                    )
                    == 2
                ):
                    break
        counts = per_worker_counts(metrics_directory(tmp_path, mode))
        assert len([count for count in counts.values() if count]) == 2, counts
        assert sum(counts.values()) == sent

        for _ in range(6):  # answered by either worker, every scrape sees every worker
            response = httpx.get(f"{base}/metrics", timeout=10)
            assert response.status_code == 200
            samples = parse(response.text)
            assert value(samples, REQUESTS, method="GET", route="/", status="200") == sent
            assert (
                value(
                    samples,
                    "http_request_duration_seconds_count",
                    method="GET",
                    route="/",
                    status="200",
                )
                == sent
            )
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    # Our access line for every request, uvicorn's for none.
    output = log.read_text()
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    served = [r for r in records if r["logger"] == "blog.access" and r["route"] == "/"]
    assert len(served) == sent
    assert not [r for r in records if r["logger"] == "uvicorn.access"]
    assert '"GET / HTTP/1.1" 200' not in output


def test_the_access_line_s_fast_path_writes_what_logger_info_would(log_output: Any) -> None:
    """access_log.AccessRecord through JsonFormatter's fast path: the same keys, values and
    order as the same fields logged with Logger.info(extra=...)."""
    from access_log import AccessRecord, access_logger

    buffer = log_output("json")
    fields = {
        "request_id": "same-1",
        "method": "GET",
        "route": TEMPLATE,
        "path": "/posts/7",
        "status": 200,
        "duration_ms": 1.234,
        "user_id": 3,
        "client_ip": "10.0.0.9",
    }
    token = request_id_var.set("same-1")
    try:
        access_logger.handle(AccessRecord(f"GET {TEMPLATE} 200 1.2ms", dict(fields)))
        access_logger.info(f"GET {TEMPLATE} 200 1.2ms", extra=dict(fields))
    finally:
        request_id_var.reset(token)
    fast, general = buffer.getvalue().splitlines()
    fast_record, general_record = json.loads(fast), json.loads(general)
    assert list(fast_record) == list(general_record)
    fast_record.pop("time"), general_record.pop("time")
    assert fast_record == general_record
    assert fast_record["instance"] and fast_record["request_id"] == "same-1"


def test_the_direct_access_line_is_the_logged_one(log_output: Any) -> None:
    """logging_setup.JsonLinesHandler.write_line (the access line without a log record) writes
    the same keys, values and order as the record through JsonFormatter and as Logger.info."""
    from access_log import AccessRecord, access_logger
    from logging_setup import direct_json_handler

    buffer = log_output("json", "api-3")
    [handler] = logging.getLogger().handlers
    assert direct_json_handler(access_logger) is handler
    fields = {
        "request_id": "direct-1",
        "method": "POST",
        "route": "/posts",
        "path": "/posts",
        "status": 201,
        "duration_ms": 3.5,
        "user_id": 9,
        "client_ip": "10.0.0.7",
    }
    message = "POST /posts 201 3.5ms"
    token = request_id_var.set("direct-1")
    try:
        handler.write_line(access_logger.name, message, dict(fields))
        access_logger.handle(AccessRecord(message, dict(fields)))
        access_logger.info(message, extra=dict(fields))
    finally:
        request_id_var.reset(token)
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert len(lines) == 3
    assert len({tuple(line) for line in lines}) == 1  # the same keys in the same order
    for line in lines:
        assert line.pop("time")
    assert lines[0] == lines[1] == lines[2]
    assert lines[0]["instance"] == "api-3" and lines[0]["logger"] == "blog.access"


async def test_the_access_line_is_a_log_record_where_anything_else_may_see_it(
    client: httpx.AsyncClient, log_output: Any
) -> None:
    """Another handler (pytest's caplog, a collector), a filter, a changed formatter or level:
    the access line goes through `logging`, which they see; the JSON line is the same."""
    from access_log import access_logger
    from logging_setup import direct_json_handler

    buffer = log_output("json")
    [handler] = logging.getLogger().handlers
    records: list[logging.LogRecord] = []

    class Collector(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    collector = Collector()
    logging.getLogger().addHandler(collector)
    try:
        assert direct_json_handler(access_logger) is None
        assert (await client.get("/", headers={"X-Request-ID": "seen-1"})).status_code == 200
    finally:
        logging.getLogger().removeHandler(collector)
    [record] = [r for r in records if r.name == "blog.access"]
    assert record.fields["request_id"] == "seen-1"  # type: ignore[attr-defined]
    [line] = access_lines(buffer)
    assert line["request_id"] == "seen-1" and line["route"] == "/"

    assert direct_json_handler(access_logger) is handler
    rejecting = logging.Filter("nothing")
    access_logger.addFilter(rejecting)
    try:
        assert direct_json_handler(access_logger) is None
        assert (await client.get("/")).status_code == 200
    finally:
        access_logger.removeFilter(rejecting)
    assert len(access_lines(buffer)) == 1  # the filter had its say
    handler.setLevel(logging.WARNING)
    try:
        assert direct_json_handler(access_logger) is None
        assert (await client.get("/")).status_code == 200
    finally:
        handler.setLevel(logging.NOTSET)
    assert len(access_lines(buffer)) == 1
    json_formatter = handler.formatter
    handler.setFormatter(logging.Formatter("%(message)s"))
    try:
        assert direct_json_handler(access_logger) is None
    finally:
        handler.setFormatter(json_formatter)
    assert direct_json_handler(access_logger) is handler
