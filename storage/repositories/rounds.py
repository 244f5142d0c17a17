from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import Assignment, Round, Update

ACTIVE_STATES = ("collecting", "aggregating")


@dataclass(frozen=True)
class RoundCounts:
    selected: int
    submitted: int


class RoundRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, round_id: int, lock: bool | Literal["share"] = False) -> Round | None:
        """`lock=True` takes the row FOR UPDATE, `lock="share"` FOR SHARE (no-ops on SQLite,
        where writers are serialised anyway)."""
        if not lock:
            return await self.session.get(Round, round_id)
        return await self.session.get(Round, round_id, with_for_update={"read": lock == "share"},
                                      populate_existing=True)

    async def add(self, rnd: Round) -> Round:
        self.session.add(rnd)
        await self.session.flush()
        return rnd

    async def list(self, limit: int = 100) -> Sequence[Round]:
        return (await self.session.scalars(select(Round).order_by(Round.id.desc()).limit(limit))).all()

    async def active(self) -> Round | None:
        stmt = select(Round).where(Round.state.in_(ACTIVE_STATES)).order_by(Round.id)
        return (await self.session.scalars(stmt)).first()

    async def in_states(self, states: Sequence[str]) -> Sequence[Round]:
        return (await self.session.scalars(select(Round).where(Round.state.in_(states)).order_by(Round.id))).all()

    async def counts(self, round_id: int) -> RoundCounts:
        selected = await self.session.scalar(
            select(func.count()).select_from(Assignment).where(Assignment.round_id == round_id)
        )
        submitted = await self.session.scalar(
            select(func.count()).select_from(Update).where(Update.round_id == round_id)
        )
        return RoundCounts(selected=int(selected or 0), submitted=int(submitted or 0))

    async def assignment(self, round_id: int, device_id: uuid.UUID) -> Assignment | None:
        return await self.session.get(Assignment, (round_id, device_id))

    async def assign(self, round_id: int, device_id: uuid.UUID) -> bool:
        """Insert the assignment; False when it already existed."""
        try:
            async with self.session.begin_nested():
                self.session.add(Assignment(round_id=round_id, device_id=device_id))
        except IntegrityError:
            return False
        return True


async def device_has_task_for_version(session: AsyncSession, device_id: uuid.UUID, version_id: int) -> bool:
    """Whether the device is assigned to a collecting round that trains from this version."""
    stmt = (
        select(func.count())
        .select_from(Assignment)
        .join(Round, Round.id == Assignment.round_id)
        .where(Assignment.device_id == device_id, Round.base_version_id == version_id, Round.state == "collecting")
    )
    return bool(await session.scalar(stmt))
