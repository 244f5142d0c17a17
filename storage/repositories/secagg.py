"""All SQL of secure rounds: the stage row and the per-device stage messages."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from storage.db import utcnow
from storage.models import Assignment, SecAggMessage, SecAggRound


class SecAggRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, round_id: int, lock: bool = False) -> SecAggRound | None:
        if not lock:
            return await self.session.get(SecAggRound, round_id)
        return await self.session.get(SecAggRound, round_id, with_for_update=True, populate_existing=True)

    async def create(self, round_id: int, stage: str, deadline: datetime) -> SecAggRound:
        row = SecAggRound(round_id=round_id, stage=stage, stage_deadline_at=deadline, state=None, metrics={},
                          updated_at=utcnow())
        self.session.add(row)
        await self.session.flush()
        return row

    async def advance(self, row: SecAggRound, stage: str, deadline: datetime, state: dict[str, Any] | None,
                      metrics: dict[str, Any]) -> None:
        row.stage, row.stage_deadline_at, row.metrics, row.updated_at = stage, deadline, metrics, utcnow()
        if state is not None:
            row.state = state
        await self.session.flush()

    async def add_message(self, round_id: int, stage: str, device_id: uuid.UUID, body: str) -> bool:
        """Insert one stage message; False when this device already has one for the stage (nothing changes)."""
        try:
            async with self.session.begin_nested():
                self.session.add(SecAggMessage(round_id=round_id, stage=stage, device_id=device_id, body=body,
                                               created_at=utcnow()))
        except IntegrityError:
            return False
        return True

    async def add_messages(self, round_id: int, stage: str, bodies: dict[uuid.UUID, str]) -> None:
        """The server's messages of a stage, in one flush (at a close, under the round's lock)."""
        now = utcnow()
        self.session.add_all(SecAggMessage(round_id=round_id, stage=stage, device_id=d, body=b, created_at=now)
                             for d, b in bodies.items())
        await self.session.flush()

    async def message(self, round_id: int, stage: str, device_id: uuid.UUID) -> str | None:
        stmt = select(SecAggMessage.body).where(SecAggMessage.round_id == round_id, SecAggMessage.stage == stage,
                                                SecAggMessage.device_id == device_id)
        return (await self.session.scalars(stmt)).first()

    async def messages(self, round_id: int, stage: str) -> Sequence[tuple[uuid.UUID, str]]:
        stmt = (select(SecAggMessage.device_id, SecAggMessage.body)
                .where(SecAggMessage.round_id == round_id, SecAggMessage.stage == stage)
                .order_by(SecAggMessage.device_id))
        return [(d, b) for d, b in (await self.session.execute(stmt)).all()]

    async def count(self, round_id: int, stage: str) -> int:
        stmt = select(func.count()).select_from(SecAggMessage).where(SecAggMessage.round_id == round_id,
                                                                     SecAggMessage.stage == stage)
        return int(await self.session.scalar(stmt) or 0)

    async def assigned(self, round_id: int) -> list[uuid.UUID]:
        """The round's selected devices: a secure round's device list once selection closes."""
        stmt = select(Assignment.device_id).where(Assignment.round_id == round_id).order_by(Assignment.device_id)
        return list((await self.session.scalars(stmt)).all())
