"""Enrollment tokens, device enrollment and revocation."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.errors import DeviceNotFound, InvalidEnrollmentToken, TokenNotFound
from coordinator.security import device_credential, hash_secret, new_enrollment_token, new_secret
from storage.db import utcnow
from storage.models import Device, EnrollmentToken
from storage.repositories.audit import AuditRepository
from storage.repositories.devices import DeviceRepository, EnrollmentTokenRepository


async def issue_token(
    session: AsyncSession, actor: str, max_uses: int, ttl_s: float, note: str | None
) -> tuple[EnrollmentToken, str]:
    token = new_enrollment_token()
    row = await EnrollmentTokenRepository(session).add(
        EnrollmentToken(token_hash=hash_secret(token), max_uses=max_uses, uses=0,
                        expires_at=utcnow() + timedelta(seconds=ttl_s), note=note)
    )
    await AuditRepository(session).record(actor, "token.issue", str(row.id), max_uses=max_uses, ttl_s=ttl_s)
    return row, token


async def enroll(session: AsyncSession, token: str, label: str | None) -> tuple[Device, str]:
    # Row lock: two devices racing on the last use of a token cannot both win.
    row = await EnrollmentTokenRepository(session).get_by_hash_for_update(hash_secret(token))
    now = utcnow()
    if row is None or row.revoked_at is not None or row.expires_at <= now or row.uses >= row.max_uses:
        raise InvalidEnrollmentToken()
    row.uses += 1
    secret = new_secret()
    device = await DeviceRepository(session).add(
        Device(id=uuid.uuid4(), credential_hash=hash_secret(secret), label=label, token_id=row.id, created_at=now)
    )
    return device, device_credential(device.id, secret)


async def list_devices(session: AsyncSession, include_revoked: bool) -> Sequence[Device]:
    return await DeviceRepository(session).list(include_revoked=include_revoked)


async def revoke_device(session: AsyncSession, actor: str, device_id: uuid.UUID) -> Device:
    repo = DeviceRepository(session)
    device = await repo.get(device_id)
    if device is None:
        raise DeviceNotFound()
    if device.revoked_at is None:
        await repo.revoke(device_id, utcnow())
        await session.refresh(device)
        await AuditRepository(session).record(actor, "device.revoke", str(device_id))
    return device


async def list_tokens(session: AsyncSession, limit: int) -> Sequence[EnrollmentToken]:
    """The newest LIMIT enrollment tokens (their hashes only: a token is shown once, when issued)."""
    return await EnrollmentTokenRepository(session).newest(limit)


async def revoke_token(session: AsyncSession, actor: str, token_id: uuid.UUID) -> EnrollmentToken:
    """No further device enrolls with this token; devices it already enrolled keep their credentials."""
    repo = EnrollmentTokenRepository(session)
    row = await repo.get(token_id)
    if row is None:
        raise TokenNotFound(f"enrollment token {token_id} does not exist")
    if row.revoked_at is None:
        await repo.revoke(token_id, utcnow())
        await session.refresh(row)
        await AuditRepository(session).record(actor, "token.revoke", str(token_id))
    return row
