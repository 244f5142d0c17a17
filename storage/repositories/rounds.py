from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from fedface_common.wire import ACTIVE_ROUND_STATES, RoundState
from storage.models import Assignment, Device, Round, Update


@dataclass(frozen=True)
class SubmissionView:
    """What intake needs to judge a device's submission, read in one query."""

    round: Round
    assigned: bool
    previous: Update | None


@dataclass(frozen=True)
class RoundCounts:
    selected: int
    submitted: int


@dataclass(frozen=True)
class Participant:
    """A device assigned to a round, and its accepted update there if any."""

    device_id: uuid.UUID
    label: str | None
    assigned_at: datetime
    update_at: datetime | None
    num_samples: int | None
    size_bytes: int | None
    delta_norm: float | None
    client_metrics: dict[str, Any] | None


class RoundRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, round_id: int, lock: bool = False) -> Round | None:
        """`lock=True` takes the row FOR UPDATE (a no-op on SQLite, where writers are serialised anyway)."""
        if not lock:
            return await self.session.get(Round, round_id)
        return await self.session.get(Round, round_id, with_for_update=True, populate_existing=True)

    async def add(self, rnd: Round) -> Round:
        self.session.add(rnd)
        await self.session.flush()
        return rnd

    async def list(self, limit: int = 100) -> Sequence[Round]:
        return (await self.session.scalars(select(Round).order_by(Round.id.desc()).limit(limit))).all()

    async def page(self, state: str | None, algorithm: str | None, before_id: int | None,
                   limit: int) -> Sequence[Round]:
        """Newest first, LIMIT rounds with an id below BEFORE_ID (keyset paging on the primary key)."""
        stmt = select(Round).order_by(Round.id.desc()).limit(limit)
        if state:
            stmt = stmt.where(Round.state == state)
        if algorithm:
            stmt = stmt.where(Round.algorithm == algorithm)
        if before_id is not None:
            stmt = stmt.where(Round.id < before_id)
        return (await self.session.scalars(stmt)).all()

    async def algorithms(self) -> Sequence[str]:
        stmt = select(Round.algorithm).distinct().order_by(Round.algorithm)
        return [str(a) for a in (await self.session.scalars(stmt)).all()]

    async def latest(self) -> Round | None:
        return (await self.session.scalars(select(Round).order_by(Round.id.desc()).limit(1))).first()

    async def counts_many(self, round_ids: Collection[int]) -> dict[int, RoundCounts]:
        """`counts` of several rounds in two grouped queries."""
        if not round_ids:
            return {}
        ids = list(round_ids)
        selected = {i: n for i, n in (await self.session.execute(
            select(Assignment.round_id, func.count()).where(Assignment.round_id.in_(ids))
            .group_by(Assignment.round_id))).all()}
        submitted = {i: n for i, n in (await self.session.execute(
            select(Update.round_id, func.count()).where(Update.round_id.in_(ids))
            .group_by(Update.round_id))).all()}
        return {i: RoundCounts(int(selected.get(i, 0)), int(submitted.get(i, 0))) for i in ids}

    async def participants(self, round_id: int, after: uuid.UUID | None, limit: int) -> Sequence[Participant]:
        """The round's assigned devices in id order, LIMIT after the device id AFTER."""
        stmt = (
            select(Assignment.device_id, Device.label, Assignment.assigned_at, Update.created_at,
                   Update.num_samples, Update.size_bytes, Update.delta_norm, Update.client_metrics)
            .join(Device, Device.id == Assignment.device_id)
            .outerjoin(Update, and_(Update.round_id == Assignment.round_id, Update.device_id == Assignment.device_id))
            .where(Assignment.round_id == round_id)
            .order_by(Assignment.device_id).limit(limit)
        )
        if after is not None:
            stmt = stmt.where(Assignment.device_id > after)
        return [Participant(*row) for row in (await self.session.execute(stmt)).all()]

    async def active(self) -> Round | None:
        stmt = select(Round).where(Round.state.in_(ACTIVE_ROUND_STATES)).order_by(Round.id)
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

    async def for_submission(self, round_id: int, device_id: uuid.UUID) -> SubmissionView | None:
        """The round, whether the device is assigned to it, and its earlier
        update if any: one round trip instead of three on the busiest path."""
        stmt = (
            select(Round, Assignment.device_id, Update)
            .outerjoin(Assignment, and_(Assignment.round_id == Round.id, Assignment.device_id == device_id))
            .outerjoin(Update, and_(Update.round_id == Round.id, Update.device_id == device_id))
            .where(Round.id == round_id)
        )
        row = (await self.session.execute(stmt)).first()
        if row is None:
            return None
        return SubmissionView(round=row[0], assigned=row[1] is not None, previous=row[2])

    async def is_open_locked(self, round_id: int) -> bool:
        """Whether the round still collects, holding its row FOR SHARE until
        commit (a no-op lock on SQLite, where writers are serialised anyway)."""
        stmt = (
            select(Round.state, Round.stop_requested).where(Round.id == round_id).with_for_update(read=True)
        )
        row = (await self.session.execute(stmt)).first()
        return row is not None and row.state == RoundState.COLLECTING and not row.stop_requested

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

    async def fix_bounds(self, round_id: int, bounds: dict[str, Any]) -> dict[str, Any] | None:
        """Store the round's bounds unless some process stored them first; returns the stored ones.

        One conditional UPDATE: a concurrent writer's row lock makes this one re-check
        `bounds IS NULL` after it commits, so exactly one set of bounds is ever stored."""
        await self.session.execute(
            update(Round).where(Round.id == round_id, Round.bounds.is_(None)).values(bounds=bounds)
            .execution_options(synchronize_session=False))
        return await self.stored_bounds(round_id)

    async def stored_bounds(self, round_id: int) -> dict[str, Any] | None:
        return await self.session.scalar(
            select(Round.bounds).where(Round.id == round_id).execution_options(populate_existing=True))


async def device_has_task_for_version(session: AsyncSession, device_id: uuid.UUID, version_id: int) -> bool:
    """Whether the device is assigned to a collecting round that trains from this version."""
    stmt = (
        select(func.count())
        .select_from(Assignment)
        .join(Round, Round.id == Assignment.round_id)
        .where(Assignment.device_id == device_id, Round.base_version_id == version_id,
               Round.state == RoundState.COLLECTING)
    )
    return bool(await session.scalar(stmt))
