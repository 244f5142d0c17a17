"""The masked input of a secure round is the round's update upload: the same route, size limit and
safetensors checks as any update, with a body of one uint32 vector (`MASKED_INPUT_TENSOR`) and its
MaskedInputMeta in the safetensors metadata. Here: what intake checks beyond the common ones."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

import numpy as np
from pydantic import ValidationError
from safetensors import safe_open
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.errors import InvalidMetadata
from coordinator.secagg import protocol
from coordinator.secagg.errors import NotInStage, SecAggProtocolError
from coordinator.services.secagg.errors import SecAggRefused, WrongStage
from coordinator.services.secagg.state import device_key, load, stage_of
from fedface_common.secagg.messages import MASKED_INPUT_TENSOR, MaskedInputMeta
from fedface_common.secagg.task import SECAGG_META_KEY, Stage
from storage.blobs import BlobWriter
from storage.repositories.secagg import SecAggRepository


async def expect_input(session: AsyncSession, round_id: int, device_id: uuid.UUID) -> protocol.ServerRound:
    """Before the body is read: the round is at the masked-input stage and this device shared keys."""
    row, state = await load(session, round_id)
    if stage_of(row) != Stage.MASKED_INPUT or state is None:
        raise WrongStage(f"round {round_id} is at stage {stage_of(row)}, not {Stage.MASKED_INPUT}")
    if state.shared is None or device_key(device_id) not in state.shared:
        raise SecAggRefused(NotInStage("this device is not expected at the masked-input stage"))
    return state


def check_staged(writer: BlobWriter, metadata: Mapping[str, str], state: protocol.ServerRound,
                 device_id: uuid.UUID) -> None:
    """The metadata names the round's length and exactly the expected pairwise masks, and the vector
    matches its digest (in a worker thread: O(vector) memory)."""
    raw = metadata.get(SECAGG_META_KEY)
    if raw is None:
        raise InvalidMetadata(f"a masked input carries its {SECAGG_META_KEY!r} metadata")
    try:
        meta = MaskedInputMeta.model_validate_json(raw)
    except ValidationError as exc:
        raise InvalidMetadata(f"{SECAGG_META_KEY!r} is not a MaskedInputMeta: {exc.error_count()} errors") from None
    with safe_open(str(writer.staged_path()), framework="numpy") as f:
        vector = np.asarray(f.get_tensor(MASKED_INPUT_TENSOR))
    try:
        protocol.check_masked_input(state, device_key(device_id), meta)
        protocol.check_masked_vector(state, meta, vector)
    except SecAggProtocolError as exc:
        raise SecAggRefused(exc) from exc


async def still_collecting(session: AsyncSession, round_id: int) -> None:
    """Re-read under the round's share lock, just before commit: the stage may have closed meanwhile."""
    row = await SecAggRepository(session).get(round_id, lock=False)
    if row is not None:
        await session.refresh(row)
    if stage_of(row) != Stage.MASKED_INPUT:
        raise WrongStage(f"round {round_id}'s masked-input stage closed while the input was uploading")
