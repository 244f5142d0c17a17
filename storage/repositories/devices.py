from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import ClassEmbedding, Device, EnrollmentToken


class DeviceRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, device_id: uuid.UUID) -> Device | None:
        return await self.session.get(Device, device_id)

    async def add(self, device: Device) -> Device:
        self.session.add(device)
        await self.session.flush()
        return device

    async def list(self, include_revoked: bool = True, limit: int = 1000, offset: int = 0) -> Sequence[Device]:
        stmt = select(Device).order_by(Device.created_at, Device.id).limit(limit).offset(offset)
        if not include_revoked:
            stmt = stmt.where(Device.revoked_at.is_(None))
        return (await self.session.scalars(stmt)).all()

    async def touch(self, device_id: uuid.UUID, at: datetime) -> None:
        await self.session.execute(update(Device).where(Device.id == device_id).values(last_seen_at=at))

    async def revoke(self, device_id: uuid.UUID, at: datetime) -> None:
        await self.session.execute(update(Device).where(Device.id == device_id).values(revoked_at=at))
        # W rows are personal: a revoked device's embedding must not outlive it.
        await self.session.execute(delete(ClassEmbedding).where(ClassEmbedding.device_id == device_id))


class EnrollmentTokenRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, token: EnrollmentToken) -> EnrollmentToken:
        self.session.add(token)
        await self.session.flush()
        return token

    async def get_by_hash_for_update(self, token_hash: str) -> EnrollmentToken | None:
        stmt = select(EnrollmentToken).where(EnrollmentToken.token_hash == token_hash).with_for_update()
        return (await self.session.scalars(stmt)).first()

    async def get(self, token_id: uuid.UUID) -> EnrollmentToken | None:
        return await self.session.get(EnrollmentToken, token_id)

    async def list(self) -> Sequence[EnrollmentToken]:
        return (await self.session.scalars(select(EnrollmentToken).order_by(EnrollmentToken.created_at))).all()
