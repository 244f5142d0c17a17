from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import exists, func, literal, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from fedface_common.wire import RoundState
from storage.models import Round, Update


@dataclass(frozen=True)
class UpdateTotals:
    count: int
    size_bytes: int
    max_size_bytes: int
    num_samples: int


@dataclass(frozen=True)
class UpdateFacts:
    """What a round's report reads of one accepted update (never its blob)."""

    created_at: datetime
    size_bytes: int
    num_samples: int
    delta_norm: float | None
    client_metrics: dict[str, Any]


class UpdateRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def find(self, round_id: int, device_id: uuid.UUID) -> Update | None:
        stmt = select(Update).where(Update.round_id == round_id, Update.device_id == device_id)
        return (await self.session.scalars(stmt)).first()

    async def add_if_collecting(self, values: dict[str, Any]) -> int | None:
        """Insert an update only while its round collects and unless this device
        already has one there, in one statement. The round row is held FOR SHARE
        until commit: the driver closes a round under FOR UPDATE, so an update
        is either in before the close or not inserted at all. Returns the new id,
        or None (round closed, or a row already there: the caller tells which)."""
        dialect = self.session.get_bind().dialect.name
        insert = pg_insert if dialect == "postgresql" else sqlite_insert
        still_open = (
            select(Round.id)
            .where(Round.id == values["round_id"], Round.state == RoundState.COLLECTING,
                   Round.stop_requested.is_(False))
            .with_for_update(read=True)
        )
        columns = list(values)
        row = select(*(literal(values[c], type_=Update.__table__.c[c].type).label(c) for c in columns)).where(
            exists(still_open))
        stmt = insert(Update).from_select(columns, row).on_conflict_do_nothing(
            index_elements=["round_id", "device_id"]).returning(Update.id)
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def for_round(self, round_id: int) -> Sequence[Update]:
        """Accepted updates in a stable order (aggregation must not depend on it, but logs read better)."""
        return (await self.session.scalars(select(Update).where(Update.round_id == round_id).order_by(Update.id))).all()

    async def count(self, round_id: int) -> int:
        stmt = select(func.count()).select_from(Update).where(Update.round_id == round_id)
        return int(await self.session.scalar(stmt) or 0)

    async def first_nonzero_norms(self, round_id: int, n: int) -> list[float]:
        """The delta norms of the round's first n accepted updates that moved anything."""
        stmt = (select(Update.delta_norm).where(Update.round_id == round_id, Update.delta_norm > 0)
                .order_by(Update.id).limit(n))
        return [float(v) for v in (await self.session.scalars(stmt)).all() if v is not None]

    async def first_sample_counts(self, round_id: int, n: int) -> list[int]:
        stmt = select(Update.num_samples).where(Update.round_id == round_id).order_by(Update.id).limit(n)
        return [int(v) for v in (await self.session.scalars(stmt)).all()]

    async def totals(self, round_id: int) -> UpdateTotals:
        stmt = select(func.count(), func.coalesce(func.sum(Update.size_bytes), 0),
                      func.coalesce(func.max(Update.size_bytes), 0),
                      func.coalesce(func.sum(Update.num_samples), 0)).where(Update.round_id == round_id)
        count, size, biggest, samples = (await self.session.execute(stmt)).one()
        return UpdateTotals(int(count), int(size), int(biggest), int(samples))

    async def facts(self, round_id: int, limit: int) -> list[UpdateFacts]:
        """The first LIMIT accepted updates of the round, in arrival order."""
        stmt = (select(Update.created_at, Update.size_bytes, Update.num_samples, Update.delta_norm,
                       Update.client_metrics).where(Update.round_id == round_id).order_by(Update.id).limit(limit))
        return [UpdateFacts(*row) for row in (await self.session.execute(stmt)).all()]
