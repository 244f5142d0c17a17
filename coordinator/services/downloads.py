"""What a device may download: only what its current task names, plus its own
row of W. Blobs are streamed with the content hash as a strong ETag."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.errors import Forbidden, NotFound, NotSelected
from coordinator.services import models as model_service
from coordinator.services import rounds as round_service
from coordinator.strategies import make_strategy
from fedface_common.tensors import encode
from fedface_common.wire import CLASS_EMBEDDING_TENSOR
from storage.models import Device
from storage.repositories.embeddings import ClassEmbeddingRepository
from storage.repositories.rounds import RoundRepository, device_has_task_for_version


@dataclass(frozen=True)
class BlobRef:
    sha256: str
    filename: str


async def model_for_device(session: AsyncSession, device: Device, version_id: int) -> BlobRef:
    # The task is checked before the version is looked up: a version that does not exist and one
    # outside the task get the same answer, so a device cannot learn which ids exist.
    if not await device_has_task_for_version(session, device.id, version_id):
        raise Forbidden(f"no current task of this device names model version {version_id}")
    version = await model_service.with_weights(session, version_id)
    return BlobRef(version.blob_sha256, f"model-v{version_id}.safetensors")


async def _assigned_round(session: AsyncSession, device: Device, round_id: int) -> tuple[str, dict[str, object]]:
    rnd = await round_service.get(session, round_id)
    if await RoundRepository(session).assignment(round_id, device.id) is None:
        raise NotSelected(f"device is not part of round {round_id}")
    return rnd.algorithm, rnd.config


async def class_embedding_for_device(session: AsyncSession, device: Device, round_id: int) -> bytes:
    await _assigned_round(session, device, round_id)
    vec = await ClassEmbeddingRepository(session).get(device.id)
    if vec is None:
        raise NotFound("the coordinator holds no class embedding for this device yet")
    return encode({CLASS_EMBEDDING_TENSOR: vec})


async def class_centres_for_device(session: AsyncSession, device: Device, round_id: int) -> BlobRef:
    algorithm, config = await _assigned_round(session, device, round_id)
    rnd = await round_service.get(session, round_id)
    params = config.get("params")
    strategy = make_strategy(algorithm, params if isinstance(params, dict) else None)
    version = await model_service.get(session, rnd.base_version_id)
    if not strategy.ships_class_centres or version.class_centres_sha256 is None:
        raise NotFound(f"round {round_id} ships no class centres")
    return BlobRef(version.class_centres_sha256, f"class-centres-v{version.id}.safetensors")
