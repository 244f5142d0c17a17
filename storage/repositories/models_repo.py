from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from storage.models import ModelVersion, ServedModel


class ModelVersionRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, version_id: int) -> ModelVersion | None:
        return await self.session.get(ModelVersion, version_id)

    async def add(self, version: ModelVersion) -> ModelVersion:
        self.session.add(version)
        await self.session.flush()
        return version

    async def list(self, limit: int = 1000) -> Sequence[ModelVersion]:
        return (await self.session.scalars(select(ModelVersion).order_by(ModelVersion.id).limit(limit))).all()

    async def lineage(self, version_id: int) -> set[int]:
        """The version and all its ancestors (the versions it was trained from), in one recursive query."""
        chain = select(ModelVersion.id, ModelVersion.parent_id).where(ModelVersion.id == version_id).cte(
            "lineage", recursive=True)
        parent = aliased(ModelVersion)
        chain = chain.union_all(select(parent.id, parent.parent_id).where(parent.id == chain.c.parent_id))
        return set((await self.session.scalars(select(chain.c.id))).all())

    async def unpruned_ids(self) -> Sequence[int]:
        stmt = select(ModelVersion.id).where(ModelVersion.pruned_at.is_(None)).order_by(ModelVersion.id)
        return (await self.session.scalars(stmt)).all()

    async def mark_pruned(self, version_ids: Collection[int], at: datetime) -> None:
        if version_ids:
            await self.session.execute(update(ModelVersion).where(
                ModelVersion.id.in_(list(version_ids)), ModelVersion.pruned_at.is_(None)).values(pruned_at=at))

    async def served_id(self, lock: bool = False) -> int | None:
        stmt = select(ServedModel).where(ServedModel.id == 1)
        if lock:
            stmt = stmt.with_for_update()
        row = (await self.session.scalars(stmt)).first()
        return row.version_id if row else None

    async def set_served(self, version_id: int, at: datetime) -> None:
        row = await self.session.get(ServedModel, 1, with_for_update=True)
        if row is None:
            self.session.add(ServedModel(id=1, version_id=version_id, updated_at=at))
        else:
            row.version_id = version_id
            row.updated_at = at
        await self.session.flush()
