"""Folding accepted updates from the blob store into an accumulator, one at a
time, so memory stays O(model size). Used at close and by replicas' partial sums."""

from __future__ import annotations

import asyncio
import uuid

from coordinator.strategies import Accumulator
from coordinator.strategies.robust import BoundedAggregation
from fedface_common import update_codec
from fedface_common.tensors import TensorSpec, decode
from storage.blobs import BlobStore


class AggregationError(Exception):
    """Computing on the devices' values failed: retrying cannot help, so the round fails with this reason.

    Only the computation raises it; a blob store or database that is unreachable is not this (the
    driver retries those on its next pass)."""


async def fold_updates(blobs: BlobStore, aggregation: BoundedAggregation, updates: list[tuple[uuid.UUID, str, int]],
                       expected: TensorSpec) -> Accumulator:
    """Fold (device_id, blob sha256, num_samples) triples into a fresh accumulator.

    `expected` is the round's F32 update spec: each body is checked against it in the round's update
    encoding and decoded to F32 deltas here, one update at a time, before the strategy sees it."""
    acc = Accumulator()
    for device_id, sha, num_samples in updates:
        data = await blobs.get_bytes(sha)

        def _fold(data: bytes = data, device_id: uuid.UUID = device_id, num_samples: int = num_samples) -> None:
            # Finiteness was checked at intake; the round engine checks the aggregate again.
            try:
                update = update_codec.decode(decode(data, require_finite=False), aggregation.update_encoding,
                                             expected)
                aggregation.fold(acc, device_id, update, num_samples)
            except Exception as exc:
                raise AggregationError(f"update of device {device_id}: {type(exc).__name__}: {exc}") from exc

        await asyncio.to_thread(_fold)
        del data
    return acc
