from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import Update


class UpdateRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def find(self, round_id: int, device_id: uuid.UUID) -> Update | None:
        stmt = select(Update).where(Update.round_id == round_id, Update.device_id == device_id)
        return (await self.session.scalars(stmt)).first()

    async def add(self, upd: Update) -> Update:
        self.session.add(upd)
        await self.session.flush()
        return upd

    async def for_round(self, round_id: int) -> Sequence[Update]:
        """Accepted updates in a stable order (aggregation must not depend on it, but logs read better)."""
        return (await self.session.scalars(select(Update).where(Update.round_id == round_id).order_by(Update.id))).all()

    async def count(self, round_id: int) -> int:
        stmt = select(func.count()).select_from(Update).where(Update.round_id == round_id)
        return int(await self.session.scalar(stmt) or 0)
