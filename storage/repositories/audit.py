from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import AuditEntry


class AuditRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def record(self, actor: str, action: str, target: str | None = None, **details: Any) -> None:
        self.session.add(AuditEntry(actor=actor, action=action, target=target, details=details))
        await self.session.flush()

    async def list(self, limit: int = 200) -> Sequence[AuditEntry]:
        return (await self.session.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit))).all()

    async def page(self, before_id: int | None, limit: int) -> Sequence[AuditEntry]:
        """Newest first, LIMIT entries with an id below BEFORE_ID."""
        stmt = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
        if before_id is not None:
            stmt = stmt.where(AuditEntry.id < before_id)
        return (await self.session.scalars(stmt)).all()
