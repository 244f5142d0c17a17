"""FedAvg: the sample-weighted mean of the devices' deltas (McMahan et al. 2017).

For face models each device also trains its own class embedding w_c with the
positive-only loss; FedAvg stores the rows as they come and does nothing to
keep them apart, which is why it collapses with one identity per device."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import Field, StringConstraints

from coordinator.strategies.base import Accumulator, AggregationResult, Strategy, StrategyParams
from coordinator.strategies.collapse import mean_offdiagonal_cosine, normalise_rows


class PositiveLossParams(StrategyParams):
    """Client-side settings of the positive-only loss (FedAwS/FedFace)."""

    margin: float = Field(default=0.9, ge=-1, le=1, description="m in max(0, m - cos(f(x), w_c))^2")
    wc_lr_scale: float = Field(
        default=1.0, ge=0, le=100,
        description="The device's learning rate for its own w_c, as a multiple of the backbone's (0 freezes w_c"
        " on the device, so the backbone alone moves the features toward the server's spread-out target)",
    )
    embedding_stats: bool = Field(
        default=False,
        description="Devices report their photos' moments at the embedding BatchNorm and the server takes their"
        " sample-weighted mean as its running statistics: the embedding is re-centred on the devices' faces",
    )
    frozen: list[Annotated[str, StringConstraints(min_length=1, max_length=200)]] = Field(
        default_factory=list, max_length=64,
        description="Model parameters the devices must not train, by name prefix (e.g. bn_embedding.bias)",
    )


class FedAvgStrategy(Strategy):
    name: ClassVar[str] = "fedavg"
    Params = PositiveLossParams
    uses_class_embeddings: ClassVar[bool] = True

    def finalize(
        self, base: Mapping[str, np.ndarray], acc: Accumulator, class_embeddings: Mapping[uuid.UUID, np.ndarray]
    ) -> AggregationResult:
        weights = self.apply_mean_delta(base, acc)
        rows = dict(class_embeddings)
        rows.update(acc.rows)
        return AggregationResult(weights=weights, class_embeddings=self._normalised(acc.rows),
                                 metrics=self.collapse_metrics(rows, acc))

    @staticmethod
    def _normalised(rows: Mapping[uuid.UUID, np.ndarray]) -> dict[uuid.UUID, np.ndarray]:
        if not rows:
            return {}
        ids = list(rows)
        mat = normalise_rows(np.stack([rows[i] for i in ids])).astype(np.float32)
        return dict(zip(ids, mat, strict=True))

    @staticmethod
    def collapse_metrics(all_rows: Mapping[uuid.UUID, np.ndarray], acc: Accumulator) -> dict[str, Any]:
        metrics: dict[str, Any] = {"updates": acc.count, "total_samples": acc.total_weight}
        if all_rows:
            metrics["w_mean_offdiag_cos"] = mean_offdiagonal_cosine(np.stack(list(all_rows.values())))
            metrics["w_rows"] = len(all_rows)
        if acc.rows:
            metrics["submitted_mean_offdiag_cos"] = mean_offdiagonal_cosine(np.stack(list(acc.rows.values())))
        return metrics
