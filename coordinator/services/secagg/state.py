"""Reading a secure round's stored state: its stage row and the server's protocol state."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.secagg.protocol import ServerRound
from coordinator.strategies import make_strategy
from fedface_common.secagg.task import SecAggSettings, Stage
from storage.models import Round, SecAggRound
from storage.repositories.secagg import SecAggRepository

# Server -> device messages, stored beside the devices' own under these stage names.
FORWARDED = "forwarded"
UNMASK_REQUEST = "unmask_request"


def is_secure(rnd: Round) -> bool:
    params: Any = rnd.config.get("params") or {}
    secagg = params.get("secagg") if isinstance(params, dict) else None
    return isinstance(secagg, dict) and bool(secagg.get("enabled", True))


def settings_of(rnd: Round) -> SecAggSettings:
    """The round's settings (validated when the round started)."""
    settings = make_strategy(rnd.algorithm, rnd.config.get("params")).params.secagg
    assert settings is not None
    return settings


def stage_of(row: SecAggRound | None) -> Stage:
    return Stage(row.stage) if row is not None else Stage.SELECT


def server_round(row: SecAggRound | None) -> ServerRound | None:
    if row is None or row.state is None:
        return None
    return ServerRound.model_validate(row.state)


async def load(session: AsyncSession, round_id: int, lock: bool = False) -> tuple[SecAggRound | None,
                                                                                   ServerRound | None]:
    row = await SecAggRepository(session).get(round_id, lock=lock)
    return row, server_round(row)


def device_key(device_id: uuid.UUID) -> str:
    """A device's id in the protocol (its canonical UUID string; the protocol orders by it)."""
    return str(device_id)
