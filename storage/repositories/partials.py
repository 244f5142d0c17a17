from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.db import utcnow
from storage.models import PartialAggregate, Update


class PartialAggregateRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def for_round(self, round_id: int) -> Sequence[PartialAggregate]:
        stmt = select(PartialAggregate).where(PartialAggregate.round_id == round_id).order_by(PartialAggregate.id)
        return (await self.session.scalars(stmt)).all()

    async def get(self, round_id: int, replica_id: str) -> PartialAggregate | None:
        stmt = select(PartialAggregate).where(PartialAggregate.round_id == round_id,
                                              PartialAggregate.replica_id == replica_id)
        return (await self.session.scalars(stmt)).first()

    async def save(self, round_id: int, replica_id: str, blob_sha256: str, update_ids: list[int]) -> None:
        row = await self.get(round_id, replica_id)
        if row is None:
            self.session.add(PartialAggregate(round_id=round_id, replica_id=replica_id, blob_sha256=blob_sha256,
                                              update_ids=sorted(update_ids), updated_at=utcnow()))
        else:
            row.blob_sha256, row.update_ids, row.updated_at = blob_sha256, sorted(update_ids), utcnow()
        await self.session.flush()

    async def unfolded_updates(self, round_id: int, replica_id: str, covered: set[int]) -> Sequence[Update]:
        stmt = select(Update).where(Update.round_id == round_id, Update.replica_id == replica_id).order_by(Update.id)
        return [u for u in (await self.session.scalars(stmt)).all() if u.id not in covered]
