"""Model versions: registration, lineage, promotion and rollback.

FedFace's W rows are measured in the embedding space of the version that wrote them, so changing
the served version drops the rows written outside its lineage (a rolled-back branch, another
registered model); those devices start their row again from their photos at their next round.
The served model changes only between rounds: a running round would commit a child of its own
base and serve that, undoing the operator's choice."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.context import AppContext
from coordinator.errors import (
    InvalidMetadata,
    InvalidRoundState,
    ModelNotFound,
    RoundActive,
    TensorSpecMismatch,
    VersionPruned,
)
from coordinator.services.uploads import receive, validate_staged_async
from coordinator.strategies import Strategy
from fedface_common.tensors import TensorInfo, TensorSpec, spec_to_json
from fedface_common.text import control_character_in_tree
from fedface_common.wire import CLASS_CENTRES_TENSOR, MANIFEST_METADATA_KEY
from storage.db import utcnow
from storage.models import ModelVersion
from storage.repositories.audit import AuditRepository
from storage.repositories.embeddings import ClassEmbeddingRepository
from storage.repositories.models_repo import ModelVersionRepository
from storage.repositories.rounds import RoundRepository


def parse_manifest(metadata: dict[str, str]) -> dict[str, Any]:
    raw = metadata.get(MANIFEST_METADATA_KEY)
    if raw is None:
        raise InvalidMetadata(f"the model file carries no '{MANIFEST_METADATA_KEY}' metadata")
    try:
        manifest = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidMetadata("the model manifest is not JSON") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("architecture"), str):
        raise InvalidMetadata("the model manifest must be an object with an 'architecture'")
    dim = manifest.get("embedding_dim")
    if dim is not None and (not isinstance(dim, int) or not 1 <= dim <= 65536):
        raise InvalidMetadata("embedding_dim must be a positive integer")
    found = control_character_in_tree(manifest, multiline=True)  # licences and notes keep their line breaks
    if found is not None:
        raise InvalidMetadata(f"the model manifest holds a control character ({found})")
    return manifest


async def register(
    session: AsyncSession, ctx: AppContext, actor: str, body: AsyncIterator[bytes], content_length: str | None,
    note: str | None, serve: bool,
) -> ModelVersion:
    if serve:  # before the upload, so a refused request stores nothing
        await _refuse_while_a_round_runs(session)
    writer = await receive(body, content_length, ctx.settings.max_model_bytes, ctx.blobs)
    try:
        spec, metadata = await validate_staged_async(writer, None)
        manifest = parse_manifest(metadata)
        sha = await writer.commit()
    except BaseException:
        await writer.abort()
        raise
    repo = ModelVersionRepository(session)
    version = await repo.add(
        ModelVersion(blob_sha256=sha, size_bytes=writer.size, manifest=manifest, tensor_spec=spec_to_json(spec),
                     metrics={}, note=note, created_at=utcnow())
    )
    # The served row's lock orders this against a round starting during the upload (which takes it too).
    served = await repo.served_id(lock=True) is None or serve
    if served:
        await _refuse_while_a_round_runs(session)
    dropped = await _serve(session, version.id) if served else 0
    await AuditRepository(session).record(actor, "model.register", str(version.id), sha256=sha, served=served,
                                          class_embeddings_dropped=dropped)
    return version


async def attach_class_centres(
    session: AsyncSession, ctx: AppContext, actor: str, version_id: int, body: AsyncIterator[bytes],
    content_length: str | None,
) -> ModelVersion:
    """Public class centres from pretraining, shipped to devices by `fedface-private`."""
    version = await with_weights(session, version_id)
    dim = version.manifest.get("embedding_dim")
    if not isinstance(dim, int):
        raise InvalidMetadata("this model has no embedding_dim, so it cannot have class centres")
    writer = await receive(body, content_length, ctx.settings.max_model_bytes, ctx.blobs)
    try:
        spec, _ = await validate_staged_async(writer, None)
        info = spec.get(CLASS_CENTRES_TENSOR)
        if set(spec) != {CLASS_CENTRES_TENSOR} or info is None or info.dtype != "F32" or len(info.shape) != 2 \
                or info.shape[1] != dim or info.shape[0] < 1:
            raise TensorSpecMismatch(f"expected one F32 tensor '{CLASS_CENTRES_TENSOR}' of shape [C, {dim}]")
        sha = await writer.commit()
    except BaseException:
        await writer.abort()
        raise
    version.class_centres_sha256 = sha
    await session.flush()
    await AuditRepository(session).record(actor, "model.class_centres", str(version_id), sha256=sha)
    return version


async def get(session: AsyncSession, version_id: int) -> ModelVersion:
    version = await ModelVersionRepository(session).get(version_id)
    if version is None:
        raise ModelNotFound(f"model version {version_id} does not exist")
    return version


async def with_weights(session: AsyncSession, version_id: int) -> ModelVersion:
    """The version, refusing one whose weights retention released (its row and metrics stay)."""
    version = await get(session, version_id)
    if version.pruned_at is not None:
        raise VersionPruned(f"model version {version_id}'s weights were released by retention on"
                            f" {version.pruned_at.isoformat()}; its metrics remain")
    return version


async def list_versions(session: AsyncSession) -> tuple[Sequence[ModelVersion], int | None]:
    repo = ModelVersionRepository(session)
    return await repo.list(), await repo.served_id()


async def promote(session: AsyncSession, actor: str, version_id: int) -> ModelVersion:
    version = await with_weights(session, version_id)
    repo = ModelVersionRepository(session)
    previous = await repo.served_id(lock=True)
    await _refuse_while_a_round_runs(session)
    dropped = await _serve(session, version.id)
    await AuditRepository(session).record(actor, "model.promote", str(version_id), previous=previous,
                                          class_embeddings_dropped=dropped)
    return version


async def rollback(session: AsyncSession, actor: str) -> ModelVersion:
    """Serve the parent of the served version."""
    repo = ModelVersionRepository(session)
    current_id = await repo.served_id(lock=True)
    current = await repo.get(current_id) if current_id is not None else None
    if current is None or current.parent_id is None:
        raise InvalidRoundState("the served version has no parent to roll back to")
    await _refuse_while_a_round_runs(session)
    dropped = await _serve(session, current.parent_id)
    await AuditRepository(session).record(actor, "model.rollback", str(current.parent_id), previous=current_id,
                                          class_embeddings_dropped=dropped)
    parent = await repo.get(current.parent_id)
    assert parent is not None
    return parent


async def _refuse_while_a_round_runs(session: AsyncSession) -> None:
    active = await RoundRepository(session).active()
    if active is not None:
        raise RoundActive(f"round {active.id} is {active.state}: stop or cancel it before changing the served model")


async def _serve(session: AsyncSession, version_id: int) -> int:
    """Serve VERSION_ID; returns how many W rows were dropped for lying outside its lineage."""
    repo = ModelVersionRepository(session)
    await repo.set_served(version_id, utcnow())
    return await ClassEmbeddingRepository(session).delete_outside(await repo.lineage(version_id))


def embedding_dim(version: ModelVersion) -> int | None:
    dim = version.manifest.get("embedding_dim")
    return dim if isinstance(dim, int) else None


def tensor_spec(version: ModelVersion) -> dict[str, TensorInfo]:
    return {name: TensorInfo.from_json(info) for name, info in version.tensor_spec.items()}


def update_spec(strategy: Strategy, version: ModelVersion) -> TensorSpec:
    """What each update of a round training `version` with `strategy` holds (its F32 deltas)."""
    return strategy.update_spec(tensor_spec(version), embedding_dim(version))
