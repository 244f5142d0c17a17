"""Aggregate a round: fold its accepted updates one at a time from the blob
store (memory O(model size)), then write the new model version and the
round's committed state in one transaction.

After a crash at any point the round is still `aggregating` and the old
version is served; the next driver simply runs this again. Blobs are
content-addressed, so re-writing the result is harmless."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import numpy as np
import structlog

from coordinator.context import AppContext
from coordinator.engine.aggregation import round_aggregation
from coordinator.engine.folding import AggregationError, fold_updates
from coordinator.engine.partials import decode_accumulator
from coordinator.engine.secagg_sum import secure_sum
from coordinator.errors import PrivacyBudgetExhausted
from coordinator.metrics import AGGREGATION_SECONDS, ROUND_DURATION
from coordinator.schemas import RoundConfig
from coordinator.services import models as model_service
from coordinator.services.rounds import create_round
from coordinator.strategies import Accumulator, AggregationResult, make_strategy
from coordinator.strategies.robust import BoundedAggregation
from fedface_common.tensors import decode, encode
from fedface_common.wire import MANIFEST_METADATA_KEY, RoundState
from storage.db import utcnow
from storage.models import ModelVersion
from storage.repositories.embeddings import ClassEmbeddingRepository
from storage.repositories.models_repo import ModelVersionRepository
from storage.repositories.partials import PartialAggregateRepository
from storage.repositories.rounds import RoundRepository
from storage.repositories.updates import UpdateRepository

log = structlog.get_logger("coordinator.aggregate")


def _all_finite(result: AggregationResult) -> bool:
    arrays = [*result.weights.values(), *result.class_embeddings.values()]
    return all(a.dtype.kind != "f" or bool(np.isfinite(a).all()) for a in arrays)


def json_safe(value: Any) -> Any:
    """Metrics as JSON can store them: a non-finite float becomes null (Postgres refuses NaN in JSON)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _finalize(aggregation: BoundedAggregation, base: dict[str, np.ndarray], acc: Accumulator,
              current_w: dict[Any, np.ndarray]) -> AggregationResult:
    try:
        return aggregation.finalize(base, acc, current_w)
    except Exception as exc:  # pure computation on device values: retrying gives the same error
        raise AggregationError(f"{type(exc).__name__}: {exc}") from exc


async def _fail(ctx: AppContext, round_id: int, reason: str) -> None:
    async with ctx.sessions() as session, session.begin():
        rnd = await RoundRepository(session).get(round_id, lock=True)
        if rnd is not None and rnd.state == RoundState.AGGREGATING:
            now = utcnow()
            rnd.state, rnd.finished_at, rnd.failure_reason, rnd.continuous_remaining = RoundState.FAILED, now, reason, 0
    await ctx.state.cache_current_round(None)
    log.error("round_failed", round_id=round_id, reason=reason)


async def merge_partials(
    ctx: AppContext, partials: list[tuple[str, set[int]]], accepted: set[int]
) -> tuple[Accumulator, set[int]]:
    """Merge the replicas' partial sums; returns the sum and the update ids it covers.

    Partials must cover disjoint sets of accepted updates. If they do not
    (which would be a bug), they are ignored and everything is folded directly:
    correctness over speed."""
    acc, covered = Accumulator(), set[int]()
    for sha, ids in partials:
        if not ids <= accepted or ids & covered:
            log.error("inconsistent_partials", sha256=sha)
            return Accumulator(), set()
        acc.merge(decode_accumulator(await ctx.blobs.get_bytes(sha)))
        covered |= ids
    return acc, covered


async def aggregate_round(ctx: AppContext, round_id: int) -> int | None:
    """Returns the new version id, or None when another process got there first."""
    started = time.perf_counter()
    async with ctx.sessions() as session:
        rnd = await RoundRepository(session).get(round_id)
        if rnd is None or rnd.state != RoundState.AGGREGATING:
            return None
        base = await model_service.get(session, rnd.base_version_id)
        rows = await UpdateRepository(session).for_round(round_id)
        partials = [(p.blob_sha256, set(p.update_ids)) for p in await PartialAggregateRepository(session).for_round(
            round_id)]
        strategy = make_strategy(rnd.algorithm, rnd.config.get("params"))
        dim = model_service.embedding_dim(base)
        current_w = await ClassEmbeddingRepository(session).all(dim) if strategy.uses_class_embeddings and dim else {}
        expected = model_service.update_spec(strategy, base)
        base_sha, base_manifest, algorithm = base.blob_sha256, base.manifest, rnd.algorithm
        config = RoundConfig.model_validate(rnd.config)

    robust = strategy.params.robust
    secure_metrics: dict[str, Any] | None = None
    try:
        if strategy.secure:  # the updates are masked: only their sum is ever decoded
            aggregation, acc, secure_metrics = await secure_sum(ctx, round_id, strategy, list(rows), base)
            folded, direct = set[int](), []
        else:
            maybe = await round_aggregation(ctx, round_id, strategy, closing=True)
            assert maybe is not None  # at close the bounds are always fixed
            aggregation = maybe
            acc, folded = await merge_partials(ctx, partials if robust.streaming else [], {u.id for u in rows})
            direct = [(u.device_id, u.blob_sha256, u.num_samples) for u in rows if u.id not in folded]
            acc.merge(await fold_updates(ctx.blobs, aggregation, direct, expected))
        base_weights = decode(await ctx.blobs.get_bytes(base_sha))
        result = await asyncio.to_thread(_finalize, aggregation, base_weights, acc, current_w)
    except AggregationError as exc:
        await _fail(ctx, round_id, f"aggregation failed: {exc}; the served model is unchanged"[:2000])
        return None
    del base_weights
    if not await asyncio.to_thread(_all_finite, result):
        await _fail(ctx, round_id, "aggregation produced NaN or Inf; the served model is unchanged")
        return None
    # Verification thresholds were calibrated on the parent's embeddings; a child must be calibrated anew.
    child_manifest = {k: v for k, v in base_manifest.items() if k != "thresholds"}
    blob = encode(result.weights, {MANIFEST_METADATA_KEY: json.dumps(child_manifest)})
    new_sha = await ctx.blobs.put_bytes(blob)
    size = len(blob)
    del blob
    aggregate_s = time.perf_counter() - started
    metrics = json_safe({**result.metrics, "aggregate_s": round(aggregate_s, 4), "algorithm": algorithm,
                         "folded_from_partials": len(folded), "folded_at_close": len(direct)})
    if secure_metrics is not None:
        metrics["secagg"] = json_safe(secure_metrics)

    async with ctx.sessions() as session, session.begin():
        rounds = RoundRepository(session)
        rnd = await rounds.get(round_id, lock=True)
        if rnd is None or rnd.state != RoundState.AGGREGATING:
            return None  # another driver committed it while we computed
        now = utcnow()
        if result.replaces_class_embeddings:  # before the version is written, so its metrics carry the count
            metrics["class_embeddings_dropped"] = await ClassEmbeddingRepository(session).delete_all()
        versions = ModelVersionRepository(session)
        version = await versions.add(ModelVersion(
            parent_id=rnd.base_version_id, round_id=round_id, blob_sha256=new_sha, size_bytes=size,
            manifest=base_manifest, tensor_spec=base.tensor_spec, class_centres_sha256=base.class_centres_sha256,
            metrics=metrics, created_at=now,
        ))
        await versions.set_served(version.id, now)
        if result.class_embeddings:
            await ClassEmbeddingRepository(session).upsert_many(result.class_embeddings, version.id)
        rnd.state, rnd.result_version_id, rnd.finished_at, rnd.metrics = RoundState.COMMITTED, version.id, now, metrics
        if "dp" in metrics:  # into the ledger, with the adaptive clip the next DP round starts from
            rnd.dp_state = metrics["dp"]
        if rnd.continuous_remaining > 0:
            try:
                await create_round(session, config, version.id, rnd.continuous_remaining - 1,
                                   ctx.settings.dp_epsilon_budget)
            except PrivacyBudgetExhausted as exc:  # refused before writing anything: this commit stands
                rnd.metrics = {**metrics, "continuous_stopped": str(exc)}
                log.warning("continuous_rounds_stopped", round_id=round_id, reason=str(exc))
        new_version_id = version.id
        duration = (now - rnd.created_at).total_seconds()
    await ctx.state.cache_current_round(None)
    AGGREGATION_SECONDS.observe(aggregate_s)
    ROUND_DURATION.labels(state=RoundState.COMMITTED).observe(duration)
    log.info("round_committed", round_id=round_id, version_id=new_version_id, updates=acc.count,
             aggregate_s=round(aggregate_s, 3))
    return new_version_id
