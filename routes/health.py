"""Liveness and readiness."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from schemas import Readiness, Status

logger = logging.getLogger("blog.health")

router = APIRouter(tags=["health"])


@router.get("/", response_model=Status, operation_id="liveness")
async def liveness() -> dict[str, str]:
    """Liveness: the process answers; touches nothing else."""
    return {"status": "ok"}


@router.get(
    "/health/ready",
    operation_id="readiness",
    response_model=Readiness,
    responses={
        503: {
            "model": Readiness,
            "description": "SERVICE_UNAVAILABLE: the database or configured Redis is down.",
        }
    },
)
async def readiness(request: Request) -> JSONResponse:
    """Readiness: the database (and Redis, when configured) answer."""
    body: dict[str, Any] = {"status": "ok", "database": "ok", "cache": "disabled"}
    failures = []
    try:
        await request.app.state.database.ping()
    except Exception as exc:
        logger.warning("readiness: database unreachable: %s", exc)
        body["database"] = "error"
        failures.append("database")
    redis = getattr(request.app.state, "redis", None)
    if redis is not None:
        try:
            await redis.ping()
            body["cache"] = "ok"
        except Exception as exc:
            logger.warning("readiness: redis unreachable: %s", exc)
            body["cache"] = "error"
            failures.append("cache")
    if failures:
        body.update(
            status="unavailable",
            detail=f"Unreachable: {', '.join(failures)}",
            error_code="SERVICE_UNAVAILABLE",
        )
        return JSONResponse(body, status_code=503)
    return JSONResponse(body)
