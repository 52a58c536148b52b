"""Liveness and readiness."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from config import Settings
from database import Database, describe_error
from migrations import MIGRATE_COMMAND, behind_message, current_revision
from schemas import Readiness, Status

logger = logging.getLogger("blog.health")

router = APIRouter(tags=["health"])


@router.get("/", response_model=Status, operation_id="liveness")
async def liveness() -> dict[str, str]:
    """Liveness: the process answers; touches nothing else."""
    return {"status": "ok"}


@router.get("/health/live", response_model=Status, operation_id="health_live")
async def health_live() -> dict[str, str]:
    """Liveness beside readiness under /health/: the same as GET /."""
    return await liveness()


@router.get(
    "/health/ready",
    operation_id="readiness",
    response_model=Readiness,
    responses={
        503: {
            "model": Readiness,
            "description": "SERVICE_UNAVAILABLE: the database is unreachable (`database: error`) "
            "or its schema is not this version's (`database: not migrated`).",
        }
    },
)
async def readiness(request: Request) -> JSONResponse:
    """Readiness: the database answers with this version's schema (Redis down: `degraded`)."""
    settings: Settings = request.app.state.settings
    database: Database = request.app.state.database
    body: dict[str, Any] = {"status": "ok", "database": "ok", "cache": "disabled"}
    problem = None
    try:
        problem = behind_message(await current_revision(database))
    except Exception as exc:
        logger.warning("readiness: database unreachable: %s", describe_error(exc))
        body["database"] = "error"
        problem = "the database is unreachable"
    else:
        if problem is not None:
            body["database"] = "not migrated"
            problem += f": run `{MIGRATE_COMMAND}`"
    redis = getattr(request.app.state, "redis", None)
    if redis is not None:
        try:
            await redis.ping()
            body["cache"] = "redis"
        except Exception as exc:
            logger.warning("readiness: redis unreachable: %s", exc)
            body["cache"] = "degraded"
    elif settings.cache_ttl_seconds > 0:
        body["cache"] = "in-process"
    if problem is not None:
        body.update(status="unavailable", detail=problem, error_code="SERVICE_UNAVAILABLE")
        return JSONResponse(body, status_code=503)
    return JSONResponse(body)
