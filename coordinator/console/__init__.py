"""The operator console: server-rendered pages under /console, in the coordinator's own process.

Pages call the services the admin API calls; templates and assets sit beside the routes."""

from __future__ import annotations

from fastapi import APIRouter

from coordinator.console import assets, audit, devices, login, models, overview, rounds, trends

router = APIRouter(include_in_schema=False)
for module in (assets, login, overview, rounds, trends, models, devices, audit):
    router.include_router(module.router)

__all__ = ["router"]
