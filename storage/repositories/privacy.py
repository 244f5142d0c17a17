"""The privacy ledger's queries: the committed rounds' DP states and the population they sampled from."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from fedface_common.wire import RoundState
from storage.models import Device, Round


class PrivacyRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def committed_dp_rounds(self) -> list[tuple[int, dict[str, Any]]]:
        """(round id, dp_state) of every committed DP round, oldest first: what the accountant composes."""
        stmt = (select(Round.id, Round.dp_state)
                .where(Round.state == RoundState.COMMITTED, Round.dp_state.is_not(None)).order_by(Round.id))
        return [(int(row.id), dict(row.dp_state)) for row in await self.session.execute(stmt)]

    async def committed_non_private_rounds(self) -> int:
        """Committed rounds without DP: their devices' updates were released with no noise."""
        stmt = (select(func.count()).select_from(Round)
                .where(Round.state == RoundState.COMMITTED, Round.dp_state.is_(None)))
        return int(await self.session.scalar(stmt) or 0)

    async def enrolled_population(self) -> int:
        """Devices that can be selected: enrolled and not revoked."""
        stmt = select(func.count()).select_from(Device).where(Device.revoked_at.is_(None))
        return int(await self.session.scalar(stmt) or 0)

    async def round_state(self, round_id: int) -> dict[str, Any] | None:
        state = await self.session.scalar(
            select(Round.dp_state).where(Round.id == round_id).execution_options(populate_existing=True))
        return None if state is None else dict(state)
