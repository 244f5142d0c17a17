"""FastAPI dependencies: the request's transaction and the caller's identity."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

import structlog
from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.context import AppContext
from coordinator.errors import CredentialRevoked, Unauthorized
from coordinator.security import hash_secret, matches, parse_device_credential
from storage.models import Device
from storage.repositories.devices import DeviceRepository


def get_ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


Ctx = Annotated[AppContext, Depends(get_ctx)]


async def get_session(ctx: Ctx) -> AsyncIterator[AsyncSession]:
    """One transaction per request, committed when the route returns and
    before the response is sent (scope="function"), rolled back on any error."""
    async with ctx.sessions() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


Session = Annotated[AsyncSession, Depends(get_session, scope="function")]


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthorized("send 'Authorization: Bearer <credential>'")
    return value.strip()


async def require_device(request: Request, session: Session) -> Device:
    parsed = parse_device_credential(_bearer(request))
    if parsed is None:
        raise Unauthorized("malformed device credential")
    device_id, secret = parsed
    device = await DeviceRepository(session).get(device_id)
    if device is None or not matches(secret, device.credential_hash):
        raise Unauthorized("unknown device or wrong credential")
    if device.revoked_at is not None:
        raise CredentialRevoked()
    # Each request runs in its own task, so this binding stays with this request's logs.
    structlog.contextvars.bind_contextvars(device_id=str(device.id))
    return device


CurrentDevice = Annotated[Device, Depends(require_device)]


@dataclass(frozen=True)
class Admin:
    name: str = "admin"


async def require_admin(request: Request, ctx: Ctx) -> Admin:
    token = _bearer(request)
    if token.startswith("ffd_"):
        raise Unauthorized("a device credential cannot call the admin API")
    if not hmac.compare_digest(hash_secret(token), ctx.admin_token_hash):
        raise Unauthorized("wrong admin token")
    return Admin()


CurrentAdmin = Annotated[Admin, Depends(require_admin)]
