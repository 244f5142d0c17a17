from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import String, and_, cast, delete, func, or_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import Assignment, ClassEmbedding, Device, EnrollmentToken, Update


@dataclass(frozen=True)
class DeviceCounts:
    enrolled: int
    active: int
    revoked: int


@dataclass(frozen=True)
class Participation:
    assigned: int
    submitted: int


def _like_escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


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

    async def counts(self, active_since: datetime) -> DeviceCounts:
        """Enrolled, active (not revoked, seen since ACTIVE_SINCE) and revoked devices, in one scan."""
        stmt = select(
            func.count(),
            func.count().filter(and_(Device.revoked_at.is_(None), Device.last_seen_at >= active_since)),
            func.count(Device.revoked_at),
        ).select_from(Device)
        enrolled, active, revoked = (await self.session.execute(stmt)).one()
        return DeviceCounts(int(enrolled), int(active), int(revoked))

    async def page(self, search: str | None, before: tuple[datetime, uuid.UUID] | None,
                   limit: int) -> Sequence[Device]:
        """Newest first, LIMIT rows after the keyset BEFORE (created_at, id) of the last row shown: a deep
        page costs what the first does. SEARCH matches a label anywhere or an id from its start."""
        stmt = select(Device).order_by(Device.created_at.desc(), Device.id.desc()).limit(limit)
        if before is not None:
            stmt = stmt.where(tuple_(Device.created_at, Device.id) < tuple_(*before))
        if search:
            pattern = _like_escaped(search)
            stmt = stmt.where(or_(Device.label.ilike(f"%{pattern}%", escape="\\"),
                                  cast(Device.id, String).like(f"{pattern.lower()}%", escape="\\")))
        return (await self.session.scalars(stmt)).all()

    async def participation(self, device_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, Participation]:
        """Rounds each device was assigned to and rounds it sent an accepted update to."""
        if not device_ids:
            return {}
        ids = list(device_ids)
        assigned = {i: n for i, n in (await self.session.execute(
            select(Assignment.device_id, func.count()).where(Assignment.device_id.in_(ids))
            .group_by(Assignment.device_id))).all()}
        submitted = {i: n for i, n in (await self.session.execute(
            select(Update.device_id, func.count()).where(Update.device_id.in_(ids))
            .group_by(Update.device_id))).all()}
        return {i: Participation(int(assigned.get(i, 0)), int(submitted.get(i, 0))) for i in ids}

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

    async def newest(self, limit: int) -> Sequence[EnrollmentToken]:
        stmt = select(EnrollmentToken).order_by(EnrollmentToken.created_at.desc(), EnrollmentToken.id).limit(limit)
        return (await self.session.scalars(stmt)).all()

    async def revoke(self, token_id: uuid.UUID, at: datetime) -> None:
        await self.session.execute(update(EnrollmentToken).where(
            EnrollmentToken.id == token_id, EnrollmentToken.revoked_at.is_(None)).values(revoked_at=at))
