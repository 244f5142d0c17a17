"""A device's JSON stage messages (AdvertiseKeys, ShareKeys, UnmaskResponse): checked against the stored
protocol state, stored once per (round, stage, device). An identical resend is answered as the first was;
a different second message is refused (409 secagg_duplicate_message) and changes nothing."""

from __future__ import annotations

import uuid
from typing import TypeVar

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.context import AppContext
from coordinator.errors import NotSelected, RoundClosed
from coordinator.secagg import protocol
from coordinator.secagg.errors import SecAggProtocolError
from coordinator.services.secagg.errors import NotSecure, SecAggRefused, WrongStage
from coordinator.services.secagg.state import device_key, is_secure, server_round, stage_of
from fedface_common.secagg.messages import AdvertiseKeys, ShareKeys, UnmaskResponse
from fedface_common.secagg.task import SecAggAck, Stage
from storage.repositories.rounds import RoundRepository
from storage.repositories.secagg import SecAggRepository

M = TypeVar("M", bound=BaseModel)


def _check(stage: Stage, state: protocol.ServerRound, sender: str, message: BaseModel) -> None:
    if stage == Stage.ADVERTISE:
        assert isinstance(message, AdvertiseKeys)
        protocol.check_advertise(state.params, sender, message)
    elif stage == Stage.SHARE_KEYS:
        assert isinstance(message, ShareKeys)
        protocol.check_share_keys(state, sender, message)
    else:
        assert isinstance(message, UnmaskResponse)
        protocol.check_unmask_response(state, sender, message)


async def post(session: AsyncSession, ctx: AppContext, device_id: uuid.UUID, round_id: int, stage: Stage,
               message: M) -> SecAggAck:
    rounds = RoundRepository(session)
    rnd = await rounds.get(round_id)
    # One answer for a round that does not exist and one the device is not in, given before anything else
    # about the round: a device learns nothing of rounds it was not selected for.
    if rnd is None or await rounds.assignment(round_id, device_id) is None:
        raise NotSelected(f"device was not selected for round {round_id}")
    if not is_secure(rnd):
        raise NotSecure(f"round {round_id} does not run secure aggregation")
    repo = SecAggRepository(session)
    previous = await repo.message(round_id, stage, device_id)
    if previous is not None:  # answered as the first was, even once the stage has closed
        return _replay(type(message).model_validate_json(previous), message, round_id, stage)
    # A share lock on the round row until commit: a stage closes under the exclusive lock, so a message is
    # either stored before the close (and counted) or refused, never acknowledged and then left out.
    if not await rounds.is_open_locked(round_id):
        raise RoundClosed(f"round {round_id} is not collecting")
    row = await repo.get(round_id)
    if stage_of(row) != stage:
        raise WrongStage(f"round {round_id} is at stage {stage_of(row)}, not {stage}")
    state = server_round(row)
    assert state is not None
    try:
        _check(stage, state, device_key(device_id), message)
    except SecAggProtocolError as exc:
        raise SecAggRefused(exc) from exc
    if not await repo.add_message(round_id, stage, device_id, message.model_dump_json()):
        raced = await repo.message(round_id, stage, device_id)  # a concurrent resend won
        assert raced is not None
        return _replay(type(message).model_validate_json(raced), message, round_id, stage)
    ctx.wake_driver()
    return SecAggAck(round_id=round_id, stage=stage, status="accepted")


def _replay(previous: BaseModel, message: BaseModel, round_id: int, stage: Stage) -> SecAggAck:
    try:
        protocol.is_new_message(previous, message)
    except SecAggProtocolError as exc:
        raise SecAggRefused(exc) from exc
    return SecAggAck(round_id=round_id, stage=stage, status="replayed")
