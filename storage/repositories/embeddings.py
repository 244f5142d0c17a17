from __future__ import annotations

import uuid
from collections.abc import Mapping

import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.db import utcnow
from storage.models import ClassEmbedding


class ClassEmbeddingRepository:
    """FedFace's W, one float32 row per device, stored little-endian."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, device_id: uuid.UUID) -> np.ndarray | None:
        row = await self.session.get(ClassEmbedding, device_id)
        return None if row is None else np.frombuffer(row.vector, dtype="<f4").copy()

    async def exists(self, device_id: uuid.UUID) -> bool:
        return await self.session.get(ClassEmbedding, device_id) is not None

    async def all(self, dim: int) -> dict[uuid.UUID, np.ndarray]:
        rows = (await self.session.scalars(select(ClassEmbedding).where(ClassEmbedding.dim == dim))).all()
        return {r.device_id: np.frombuffer(r.vector, dtype="<f4").copy() for r in rows}

    async def delete_all(self) -> int:
        """Drop every row (the embedding space they were measured in has been replaced)."""
        result = await self.session.execute(delete(ClassEmbedding))
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def delete_outside(self, version_ids: set[int]) -> int:
        """Drop the rows written by a version outside VERSION_IDS (another model's or an abandoned
        branch's embedding space)."""
        result = await self.session.execute(delete(ClassEmbedding).where(ClassEmbedding.version_id.not_in(version_ids)))
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def upsert_many(self, rows: Mapping[uuid.UUID, np.ndarray], version_id: int) -> None:
        now = utcnow()
        for device_id, vec in rows.items():
            data = np.ascontiguousarray(vec, dtype="<f4").tobytes()
            existing = await self.session.get(ClassEmbedding, device_id)
            if existing is None:
                self.session.add(
                    ClassEmbedding(device_id=device_id, vector=data, dim=int(vec.shape[0]), version_id=version_id,
                                   updated_at=now)
                )
            else:
                existing.vector, existing.dim, existing.version_id, existing.updated_at = (
                    data, int(vec.shape[0]), version_id, now)
        await self.session.flush()
