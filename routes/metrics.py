"""Prometheus metrics: no auth, never rate-limited, one scrape covers every worker process."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse, Response

import observability

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    operation_id="metrics",
    response_class=PlainTextResponse,
    responses={200: {"description": "Prometheus text exposition format 0.0.4."}},
)
def metrics() -> Response:
    """Request counts and latency histograms by route template and status, cache hits and
    misses, rate-limit rejections, Redis fallbacks and open WebSockets, summed over all workers."""
    return Response(observability.render_metrics(), media_type=observability.CONTENT_TYPE)
