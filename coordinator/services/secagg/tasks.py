"""The stage task a device of a secure round gets at check-in: the stage, and what it needs for it."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.secagg import protocol
from coordinator.services.secagg.layout import round_layout
from coordinator.services.secagg.state import FORWARDED, UNMASK_REQUEST, device_key, load, stage_of
from coordinator.strategies import Strategy
from fedface_common.secagg.messages import ForwardedShares, UnmaskRequest
from fedface_common.secagg.task import SecAggTask, Stage
from storage.db import utcnow
from storage.models import ModelVersion, Round
from storage.repositories.secagg import SecAggRepository
from storage.repositories.updates import UpdateRepository

SELECT_RETRY_S = 1.0


async def selecting(session: AsyncSession, round_id: int) -> bool:
    """Whether the secure round still takes new devices (only before its device list is fixed)."""
    row, _ = await load(session, round_id)
    return stage_of(row) == Stage.SELECT


async def task_for(session: AsyncSession, rnd: Round, device_id: uuid.UUID, strategy: Strategy,
                   version: ModelVersion) -> SecAggTask:
    """A device that is not expected at the current stage (it dropped earlier) gets the stage with no inputs:
    nothing to send, come back later."""
    row, state = await load(session, rnd.id)
    stage = stage_of(row)
    me = device_key(device_id)
    left = max(0.0, (row.stage_deadline_at - utcnow()).total_seconds()) if row is not None else None
    retry = SELECT_RETRY_S if stage == Stage.SELECT else min(max(1.0, (left or 0) / 10), 5.0)
    base = SecAggTask(stage=stage, stage_deadline=left, retry_after_s=retry,
                      layout=round_layout(strategy, version) if stage != Stage.SELECT else [])
    if state is None or stage in (Stage.SELECT, Stage.DONE):
        return base
    params = state.params
    if me not in params.devices:
        return base
    update: dict[str, object] = {"params": params}
    repo = SecAggRepository(session)
    if stage == Stage.MASKED_INPUT:
        answered = await UpdateRepository(session).find(rnd.id, device_id) is not None
    else:
        answered = await repo.message(rnd.id, stage, device_id) is not None
    if answered:  # spares the device a resend the server would answer as "replayed"
        return base.model_copy(update={**update, "answered": True})
    if stage == Stage.SHARE_KEYS and me in state.keys:
        update["neighbour_keys"] = protocol.neighbour_keys_for(state, me)
    elif stage == Stage.MASKED_INPUT:
        raw = await repo.message(rnd.id, FORWARDED, device_id)
        if raw is not None:
            update["forwarded"] = ForwardedShares.model_validate_json(raw)
    elif stage == Stage.UNMASK:
        raw = await repo.message(rnd.id, UNMASK_REQUEST, device_id)
        if raw is not None:
            update["unmask_request"] = UnmaskRequest.model_validate_json(raw)
    return base.model_copy(update=update)
