"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from coordinator.deps import Ctx

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(ctx: Ctx) -> JSONResponse:
    async def database() -> None:
        async with ctx.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    checks = {"database": database(), "redis": ctx.state.ping(), "blob_store": ctx.blobs.ping()}
    results = await asyncio.gather(*(asyncio.wait_for(c, timeout=3) for c in checks.values()), return_exceptions=True)
    status = {name: "ok" if r is None else f"error: {type(r).__name__}: {r}" for name, r in zip(checks, results,
                                                                                                   strict=True)}
    ready = all(v == "ok" for v in status.values())
    return JSONResponse({"ready": ready, "checks": status}, status_code=200 if ready else 503)


@router.get("/metrics")
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
