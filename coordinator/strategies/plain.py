"""FedAvg for any model: backbone deltas only, no class embeddings. Used for
models without an embedding head (and by the ingest benchmark)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from coordinator.strategies.base import Accumulator, AggregationResult, Strategy


class PlainFedAvgStrategy(Strategy):
    name: ClassVar[str] = "fedavg-plain"

    def finalize(
        self, base: Mapping[str, np.ndarray], acc: Accumulator, class_embeddings: Mapping[uuid.UUID, np.ndarray]
    ) -> AggregationResult:
        return AggregationResult(
            weights=self.apply_mean_delta(base, acc), class_embeddings={},
            metrics={"updates": acc.count, "total_samples": acc.total_weight},
        )
