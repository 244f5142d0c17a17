"""Folding accepted updates from the blob store into an accumulator, one at a
time, so memory stays O(model size). Used at close and by replicas' partial sums."""

from __future__ import annotations

import asyncio
import uuid

from coordinator.context import AppContext
from coordinator.strategies import Accumulator, Strategy
from fedface_common.tensors import TensorSpec, decode


async def fold_updates(ctx: AppContext, strategy: Strategy, updates: list[tuple[uuid.UUID, str, int]],
                       expected: TensorSpec) -> Accumulator:
    """Fold (device_id, blob sha256, num_samples) triples into a fresh accumulator."""
    acc = Accumulator()
    for device_id, sha, num_samples in updates:
        data = await ctx.blobs.get_bytes(sha)

        def _fold(data: bytes = data, device_id: uuid.UUID = device_id, num_samples: int = num_samples) -> None:
            # Finiteness was checked at intake; the round engine checks the aggregate again.
            strategy.fold(acc, device_id, decode(data, expected, require_finite=False), num_samples)

        await asyncio.to_thread(_fold)
        del data
    return acc
