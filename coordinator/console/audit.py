"""The admin audit log, newest first, paged by id."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from coordinator.console.auth import CONSOLE, PageSession
from coordinator.console.web import ConsoleRoute, render
from coordinator.deps import Session as Db
from storage.repositories.audit import AuditRepository

router = APIRouter(prefix=CONSOLE, route_class=ConsoleRoute)
PAGE = 100


@router.get("/audit")
async def audit_page(request: Request, session: PageSession, db: Db,
                     before: Annotated[int | None, Query(ge=1, le=2_147_483_647)] = None) -> Response:
    # As the admin API's audit route does, straight from the repository: there is no logic to share.
    entries = list(await AuditRepository(db).page(before, PAGE + 1))
    more = len(entries) > PAGE
    entries = entries[:PAGE]
    return render(request, "audit.html", session, entries=entries,
                  next_before=entries[-1].id if more and entries else None)
