"""The overview: served version, the current round's progress (refreshed by console.js from a
fragment every two seconds), the fleet's device counts and the coordinator replicas."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.console.auth import CONSOLE, FragmentSession, PageSession
from coordinator.console.web import ACTIVE_STATES, ConsoleRoute, render
from coordinator.context import AppContext
from coordinator.deps import Ctx
from coordinator.deps import Session as Db
from coordinator.services import fleet
from coordinator.services import rounds as round_service

router = APIRouter(prefix=CONSOLE, route_class=ConsoleRoute)
POLL_MS = 2000


async def _live(db: AsyncSession, ctx: AppContext) -> dict[str, Any]:
    return {
        "served": await fleet.served_version(db),
        "current": await round_service.current(db, ctx),
        "devices": await fleet.device_counts(db),
        "coordinators": await fleet.coordinators(ctx),
        "active_states": ACTIVE_STATES,
    }


@router.get("")
async def overview(request: Request, session: PageSession, db: Db, ctx: Ctx) -> Response:
    return render(request, "overview.html", session, poll_ms=POLL_MS, **await _live(db, ctx))


@router.get("/fragments/overview")
async def overview_fragment(request: Request, session: FragmentSession, db: Db, ctx: Ctx) -> Response:
    return render(request, "overview_live.html", session, **await _live(db, ctx))
