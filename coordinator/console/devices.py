"""Devices (searched and paged, never loaded whole) and enrollment tokens."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from pydantic import ValidationError

from coordinator.console.auth import CONSOLE, PageSession
from coordinator.console.forms import ACTOR, CsrfForm, errors_of, text
from coordinator.console.web import ConsoleRoute, render, see_other
from coordinator.deps import Session as Db
from coordinator.schemas import TokenRequest
from coordinator.services import enrollment as enrollment_service
from coordinator.services import fleet

router = APIRouter(prefix=CONSOLE, route_class=ConsoleRoute)
PAGE = 50
TOKENS_SHOWN = 200


@router.get("/devices")
async def devices_page(request: Request, session: PageSession, db: Db,
                       q: Annotated[str | None, Query(max_length=128)] = None,
                       after: Annotated[str | None, Query(max_length=128)] = None) -> Response:
    page = await fleet.device_page(db, (q or "").strip() or None, after or None, PAGE)
    return render(request, "devices.html", session, page=page, q=q or "", counts=await fleet.device_counts(db),
                  first_page=not after)


@router.get("/devices/{device_id}/revoke")
async def confirm_revoke_device(request: Request, device_id: uuid.UUID, session: PageSession) -> Response:
    return render(request, "confirm.html", session, title=f"Revoke device {device_id}",
                  consequence="Its credential stops working at once and its class embedding is deleted. It cannot"
                  " be undone: the device would have to enroll again with a new token.",
                  action=f"{CONSOLE}/devices/{device_id}/revoke", back=f"{CONSOLE}/devices", button="Revoke")


@router.post("/devices/{device_id}/revoke")
async def revoke_device(device_id: uuid.UUID, session: PageSession, form: CsrfForm, db: Db) -> Response:
    device = await enrollment_service.revoke_device(db, ACTOR, device_id)
    return see_other(f"{CONSOLE}/devices?q={device.id}")


@router.get("/tokens")
async def tokens_page(request: Request, session: PageSession, db: Db) -> Response:
    tokens = await enrollment_service.list_tokens(db, TOKENS_SHOWN)
    return render(request, "tokens.html", session, tokens=tokens, issued=None, errors=[],
                  defaults=TokenRequest().model_dump())


@router.post("/tokens")
async def issue_token(request: Request, session: PageSession, form: CsrfForm, db: Db) -> Response:
    values = {k: v for k in ("max_uses", "ttl_s", "note") if (v := text(form, k)) is not None}
    try:
        body = TokenRequest.model_validate(values)
    except ValidationError as exc:
        return render(request, "tokens.html", session, status=422, errors=errors_of(exc), issued=None,
                      tokens=await enrollment_service.list_tokens(db, TOKENS_SHOWN), defaults=values)
    row, token = await enrollment_service.issue_token(db, ACTOR, body.max_uses, body.ttl_s, body.note)
    # Shown in this response only (never in a URL, never stored): the page is not cached (Cache-Control: no-store).
    return render(request, "tokens.html", session, status=201, issued={"id": row.id, "token": token}, errors=[],
                  tokens=await enrollment_service.list_tokens(db, TOKENS_SHOWN), defaults=TokenRequest().model_dump())


@router.get("/tokens/{token_id}/revoke")
async def confirm_revoke_token(request: Request, token_id: uuid.UUID, session: PageSession) -> Response:
    return render(request, "confirm.html", session, title="Revoke an enrollment token",
                  consequence=f"Token {token_id} enrolls no further device. Devices it already enrolled keep"
                  " their credentials.", action=f"{CONSOLE}/tokens/{token_id}/revoke", back=f"{CONSOLE}/tokens",
                  button="Revoke token")


@router.post("/tokens/{token_id}/revoke")
async def revoke_token(token_id: uuid.UUID, session: PageSession, form: CsrfForm, db: Db) -> Response:
    await enrollment_service.revoke_token(db, ACTOR, token_id)
    return see_other(f"{CONSOLE}/tokens")
