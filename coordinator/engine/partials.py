"""Per-replica partial sums, so that aggregation work spreads over replicas.

Each coordinator process folds the updates *it* accepted into an accumulator
and persists it (a blob plus a row naming exactly the updates it covers)
after every batch. At close the driver merges the partials and folds directly
whatever no partial covers, so an update acknowledged by a replica that died
before folding it still counts, and counts once."""

from __future__ import annotations

import asyncio
import uuid

import structlog

from coordinator.context import AppContext
from coordinator.engine.aggregation import round_aggregation
from coordinator.engine.folding import AggregationError, fold_updates
from coordinator.engine.periodic import PeriodicTask
from coordinator.services import models as model_service
from coordinator.strategies import Accumulator, make_strategy
from fedface_common.tensors import decode, encode, metadata_of
from fedface_common.wire import RoundState
from storage.repositories.partials import PartialAggregateRepository
from storage.repositories.rounds import RoundRepository

log = structlog.get_logger("coordinator.partials")
_SUM, _ROW = "sum.", "row."


def encode_accumulator(acc: Accumulator) -> bytes:
    tensors = {_SUM + k: v for k, v in acc.sums.items()}
    tensors.update({_ROW + str(k): v for k, v in acc.rows.items()})
    if acc.stacked:
        raise ValueError("order-statistic accumulators are folded at close, never persisted")
    return encode(tensors, {"total_weight": repr(acc.total_weight), "count": str(acc.count),
                            "clipped": str(acc.clipped), "capped": str(acc.capped)})


def decode_accumulator(data: bytes) -> Accumulator:
    meta = metadata_of(data)
    tensors = decode(data)
    return Accumulator(
        sums={k[len(_SUM):]: v for k, v in tensors.items() if k.startswith(_SUM)},
        rows={uuid.UUID(k[len(_ROW):]): v for k, v in tensors.items() if k.startswith(_ROW)},
        total_weight=float(meta["total_weight"]), count=int(meta["count"]),
        clipped=int(meta.get("clipped", 0)), capped=int(meta.get("capped", 0)),
    )


class PartialFolder(PeriodicTask):
    """Background task of every replica: fold own accepted updates of collecting rounds. Each write persists
    an O(model) accumulator, so batching (one pass per interval) matters more than latency here."""

    failure_event = "partial_fold_failed"

    def __init__(self, ctx: AppContext) -> None:
        super().__init__()
        self.ctx = ctx
        self._cache: dict[int, tuple[Accumulator, set[int]]] = {}

    @property
    def interval_s(self) -> float:
        return self.ctx.settings.partial_fold_interval_s

    async def run_pass(self) -> int:
        return await self.fold_pending()

    async def fold_pending(self) -> int:
        """Fold this replica's not-yet-folded updates of the collecting round; returns how many."""
        ctx = self.ctx
        async with ctx.sessions() as session:
            rnd = await RoundRepository(session).active()
            if rnd is None or rnd.state != RoundState.COLLECTING:
                self._cache.clear()
                return 0
            repo = PartialAggregateRepository(session)
            if rnd.id not in self._cache:
                self._cache.clear()
                row = await repo.get(rnd.id, ctx.replica_id)
                acc = decode_accumulator(await ctx.blobs.get_bytes(row.blob_sha256)) if row else Accumulator()
                self._cache[rnd.id] = (acc, set(row.update_ids) if row else set())
            acc, covered = self._cache[rnd.id]
            pending = list(await repo.unfolded_updates(rnd.id, ctx.replica_id, covered))[
                : ctx.settings.partial_fold_batch]
            if not pending:
                return 0
            base = await model_service.get(session, rnd.base_version_id)
            strategy = make_strategy(rnd.algorithm, rnd.config.get("params"))
            expected = model_service.update_spec(strategy, base)
            round_id = rnd.id
        robust = strategy.params.robust
        if strategy.secure:
            return 0  # masked inputs are summed once, at the close (coordinator/engine/secagg_sum.py)
        if not robust.streaming:
            return 0  # order statistics need every update at once: the driver folds them at close
        aggregation = await round_aggregation(ctx, round_id, strategy, closing=False)
        if aggregation is None:
            return 0  # the adaptive bounds are not fixed yet: fold once they are
        # Fold into a copy, so that a failed write leaves the cached state as persisted.
        work = Accumulator()
        work.merge(acc)
        try:
            work.merge(await fold_updates(ctx.blobs, aggregation,
                                          [(u.device_id, u.blob_sha256, u.num_samples) for u in pending], expected))
        except AggregationError as exc:
            # Left to the driver, which folds what no partial covers and fails the round with the reason.
            log.error("partial_fold_refused", round_id=round_id, error=str(exc))
            return 0
        new_covered = covered | {u.id for u in pending}
        sha = await ctx.blobs.put_bytes(await asyncio.to_thread(encode_accumulator, work))
        async with ctx.sessions() as session, session.begin():
            # A share lock, like intake's: it keeps the driver from closing the
            # round before this commits, without stalling concurrent uploads.
            if not await RoundRepository(session).is_open_locked(round_id):
                return 0  # closing or closed meanwhile: the driver folds these directly
            await PartialAggregateRepository(session).save(round_id, ctx.replica_id, sha, sorted(new_covered))
        self._cache[round_id] = (work, new_covered)
        return len(pending)
