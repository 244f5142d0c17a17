from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import Update


class UpdateRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def find(self, round_id: int, device_id: uuid.UUID) -> Update | None:
        stmt = select(Update).where(Update.round_id == round_id, Update.device_id == device_id)
        return (await self.session.scalars(stmt)).first()

    async def add_if_absent(self, values: dict[str, Any]) -> int | None:
        """Insert an update unless this device already has one in the round
        (the unique constraint decides, so concurrent retries cannot both win).
        Returns the new id, or None when a row was already there."""
        dialect = self.session.get_bind().dialect.name
        insert = pg_insert if dialect == "postgresql" else sqlite_insert
        stmt = insert(Update).values(**values).on_conflict_do_nothing(
            index_elements=["round_id", "device_id"]).returning(Update.id)
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def get(self, update_id: int) -> Update | None:
        return await self.session.get(Update, update_id)

    async def for_round(self, round_id: int) -> Sequence[Update]:
        """Accepted updates in a stable order (aggregation must not depend on it, but logs read better)."""
        return (await self.session.scalars(select(Update).where(Update.round_id == round_id).order_by(Update.id))).all()

    async def count(self, round_id: int) -> int:
        stmt = select(func.count()).select_from(Update).where(Update.round_id == round_id)
        return int(await self.session.scalar(stmt) or 0)
