"""Prometheus metrics: never rate-limited, one scrape covers every worker process; with
METRICS_TOKEN set, only for that bearer token (deps.check_metrics_access)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

import observability

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    operation_id="metrics",
    # A media-type-less class: FastAPI would otherwise declare the error answers (JSON) as
    # text/plain too, and generated clients would parse them as text.
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition format 0.0.4.",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
def metrics() -> Response:
    """Request counts and latency histograms by route template and status, cache hits and
    misses, rate-limit rejections, Redis fallbacks and open WebSockets, summed over all workers."""
    return Response(observability.render_metrics(), media_type=observability.CONTENT_TYPE)
