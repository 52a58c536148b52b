"""Observability: Prometheus metrics, and one access line per request (access_log.py).

Metrics work with one process or many. With several worker processes each worker keeps its
samples in memory-mapped files in a shared directory and `GET /metrics` (served by any worker)
sums them all, so one scrape covers every worker. The directory is:

- `PROMETHEUS_MULTIPROC_DIR` when set (the prometheus_client convention; empty it before start);
- else, in a worker that a supervisor started (`uvicorn --workers N`, `uvicorn --reload`,
  gunicorn), a fresh directory per supervisor process under the temp directory, so that
  `uvicorn main:app --workers 2` needs no set-up;
- else (one plain process) none: the ordinary in-process registry.

prometheus_client picks its storage when it is imported, so the choice is made at the top of this
module, before the import.
"""

from __future__ import annotations

import glob
import logging
import math
import multiprocessing
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

from fastapi.routing import iter_route_contexts
from starlette.routing import Match
from starlette.types import Scope

from access_log import log_access

logger = logging.getLogger("blog.observability")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
AUTO_DIR_PREFIX = "blog-api-metrics"


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux), to tell a process from a later one with its pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[19].decode() if len(fields) > 19 else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _under_supervisor() -> bool:
    """True in a worker that uvicorn (--workers, --reload) or gunicorn started."""
    return multiprocessing.parent_process() is not None or "gunicorn" in os.environ.get(
        "SERVER_SOFTWARE", ""
    )


def _private_dir(path: Path) -> bool:
    """Create `path` (0700) if needed; True if it is ours and no one else may write to it."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    owner_ok = not hasattr(os, "getuid") or info.st_uid == os.getuid()
    return owner_ok and stat.S_ISDIR(info.st_mode) and not info.st_mode & 0o022


def _auto_multiproc_dir() -> str | None:
    """A directory shared by the workers of one supervisor, or None for a lone process."""
    if not _under_supervisor():
        return None
    supervisor = os.getppid()
    suffix = f"-{os.getuid()}" if hasattr(os, "getuid") else ""
    base = Path(tempfile.gettempdir()) / f"{AUTO_DIR_PREFIX}{suffix}"
    try:
        if not _private_dir(base):
            logger.warning("%s is not private; metrics cover this worker only", base)
            return None
        if os.name == "posix":  # directories of supervisors that are gone
            for entry in base.iterdir():
                pid, _, started = entry.name.partition("-")
                if pid.isdigit() and entry.is_dir():
                    alive = _pid_alive(int(pid)) and (_process_start(int(pid)) or "") == started
                    if not alive:
                        shutil.rmtree(entry, ignore_errors=True)
        path = base / f"{supervisor}-{_process_start(supervisor) or ''}"
        if not _private_dir(path):
            logger.warning("%s is not private; metrics cover this worker only", path)
            return None
    except OSError as exc:
        logger.warning("no shared metrics directory (%s); metrics cover this worker only", exc)
        return None
    return str(path)


def _choose_multiproc_dir() -> str | None:
    configured = os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower())
    if configured:
        Path(configured).mkdir(parents=True, exist_ok=True)
        os.environ[MULTIPROC_ENV] = configured
        return configured
    for name in (MULTIPROC_ENV, MULTIPROC_ENV.lower()):  # set but empty means unset
        os.environ.pop(name, None)
    directory = _auto_multiproc_dir()
    if directory is not None:
        os.environ[MULTIPROC_ENV] = directory  # inherited by the worker's own children too
    return directory


MULTIPROC_DIR = _choose_multiproc_dir()

# Only now: prometheus_client reads PROMETHEUS_MULTIPROC_DIR when it is imported.
from prometheus_client import (  # noqa: E402
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    values,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4  # noqa: E402
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead  # noqa: E402

if MULTIPROC_DIR is not None and not getattr(values.ValueClass, "_multiprocess", False):
    # Something imported prometheus_client before us: switch its storage now, before any metric.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
disable_created_metrics()  # type: ignore[no-untyped-call]

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
UNMATCHED = "<unmatched>"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LABELS = ("method", "route", "status")
# 8 bounds (11 lines per series with +Inf, count and sum; 13 made 16): a scrape's size and time
# grow with series x lines, and these still separate cache hits, queries and the slow tail.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
# A scrape is rendered at most once per this many seconds per worker (Prometheus scrapes every
# 15 s or so); scraping in a loop costs a dictionary lookup, not a merge of every worker's files.
SCRAPE_CACHE_SECONDS = 1.0

HTTP_REQUESTS = Counter(
    "http_requests_total", "HTTP requests by route template, method and status.", LABELS
)
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds",
    "HTTP request duration in seconds (until the response is sent) by route template.",
    LABELS,
    buckets=BUCKETS,
)
CACHE_HITS = Counter("blog_cache_hits_total", "Post cache lookups answered from the cache.")
CACHE_MISSES = Counter("blog_cache_misses_total", "Post cache lookups that missed.")
RATE_LIMITED = Counter(
    "blog_rate_limited_total", "Requests refused with 429 by limit category.", ["category"]
)
REDIS_FALLBACKS = Counter(
    "blog_redis_fallbacks_total",
    "Redis calls that failed and used the in-process fallback, by component.",
    ["component"],
)
WEBSOCKETS = Gauge(
    "blog_websocket_connections",
    "Open WebSocket connections (all live workers).",
    multiprocess_mode="livesum",
)
for _category in ("read", "write", "login", "login_account"):
    RATE_LIMITED.labels(_category)

# (method, route, status) -> (counter child, histogram child); bounded: routes are templates.
_series: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def record_cache(hit: bool) -> None:
    (CACHE_HITS if hit else CACHE_MISSES).inc()


def record_rate_limited(category: str) -> None:
    RATE_LIMITED.labels(category).inc()


def record_redis_fallback(component: str) -> None:
    """A `RedisBackend.fallback_listeners` entry."""
    REDIS_FALLBACKS.labels(component).inc()


def websocket_opened() -> None:
    WEBSOCKETS.inc()


def websocket_closed() -> None:
    WEBSOCKETS.dec()


def record_request(method: str, route: str, status: int, seconds: float) -> None:
    key = (method, route, status)
    series = _series.get(key)
    if series is None:
        labels = (method, route, str(status))
        series = _series[key] = (HTTP_REQUESTS.labels(*labels), HTTP_LATENCY.labels(*labels))
    series[0].inc()
    series[1].observe(seconds)


def sweep_dead_workers(directory: str) -> None:
    """Drop the live-gauge files of workers that are gone (their counters stay, as they should)."""
    if os.name != "posix":
        return
    pids: set[int] = set()
    for path in glob.glob(os.path.join(directory, "gauge_live*_*.db")):
        digits = path.rsplit("_", 1)[1][: -len(".db")]
        if digits.isdigit():
            pids.add(int(digits))
    for pid in pids:
        if pid != os.getpid() and not _pid_alive(pid):
            mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


_multiprocess_registry: CollectorRegistry | None = None
_rendered: tuple[float, bytes] = (-math.inf, b"")


def render_metrics() -> bytes:
    """The exposition, rendered again when the last one is over SCRAPE_CACHE_SECONDS old."""
    global _rendered
    now = time.monotonic()
    if now - _rendered[0] >= SCRAPE_CACHE_SECONDS:
        _rendered = (now, _render())
    return _rendered[1]


def _render() -> bytes:
    """The Prometheus text exposition: this process, or every worker in multiprocess mode."""
    global _multiprocess_registry
    if MULTIPROC_DIR is None:
        return generate_latest(REGISTRY)
    if _multiprocess_registry is None:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=MULTIPROC_DIR)  # type: ignore[no-untyped-call]
        _multiprocess_registry = registry
    sweep_dead_workers(MULTIPROC_DIR)
    return generate_latest(_multiprocess_registry)


def route_template(scope: Scope) -> str:
    """The path template of the route that served the request (`/posts/{post_id}`).

    Starlette's router leaves the route in `scope["route"]`. A request answered before routing
    (429, 413, CORS preflight) is matched here against the app's routes, so it is labelled by
    its template too; a path no route matches is `<unmatched>`, never itself.
    """
    route = scope.get("route")
    if route is None:
        route = _match_route(scope)
    template = getattr(route, "path", None)
    return template if isinstance(template, str) and template else UNMATCHED


_flat_routes_cache: dict[int, tuple[int, list[Any]]] = {}


def _flat_routes(routes: list[Any]) -> list[Any]:
    """The app's routes with included routers expanded (FastAPI keeps them nested)."""
    cached = _flat_routes_cache.get(id(routes))
    if cached is None or cached[0] != len(routes):
        flat: list[Any] = list(iter_route_contexts(routes))
        cached = _flat_routes_cache[id(routes)] = (len(routes), flat)
    return cached[1]


def _match_route(scope: Scope) -> Any:
    """The route the router would pick for this request: the first full match, else partial."""
    routes = getattr(getattr(scope.get("app"), "router", None), "routes", None)
    if not routes:
        return None
    partial = None
    for candidate in _flat_routes(routes):
        match = candidate.matches(scope)[0]
        if match is Match.FULL:
            return candidate
        if match is Match.PARTIAL and partial is None:
            partial = candidate
    return partial


def request_finished(scope: Scope, status: int, seconds: float) -> None:
    """Count and time an HTTP request by route template and write its access line (called by
    edge.EdgeMiddleware once the app has answered)."""
    route = route_template(scope)
    method: str = scope["method"]
    record_request(method if method in METHODS else "OTHER", route, status, seconds)
    log_access(scope, method, route, status, seconds)
