"""Folding accepted updates from the blob store into an accumulator, one at a
time, so memory stays O(model size). Used at close and by replicas' partial sums."""

from __future__ import annotations

import asyncio
import uuid

from coordinator.context import AppContext
from coordinator.strategies import Accumulator, Strategy
from fedface_common import update_codec
from fedface_common.tensors import TensorSpec, decode


async def fold_updates(ctx: AppContext, strategy: Strategy, updates: list[tuple[uuid.UUID, str, int]],
                       expected: TensorSpec) -> Accumulator:
    """Fold (device_id, blob sha256, num_samples) triples into a fresh accumulator.

    `expected` is the round's F32 update spec: each body is checked against it in the round's update
    encoding and decoded to F32 deltas here, one update at a time, before the strategy sees it."""
    acc = Accumulator()
    for device_id, sha, num_samples in updates:
        data = await ctx.blobs.get_bytes(sha)

        def _fold(data: bytes = data, device_id: uuid.UUID = device_id, num_samples: int = num_samples) -> None:
            # Finiteness was checked at intake; the round engine checks the aggregate again.
            update = update_codec.decode(decode(data, require_finite=False), strategy.update_encoding, expected)
            strategy.fold(acc, device_id, update, num_samples)

        await asyncio.to_thread(_fold)
        del data
    return acc
