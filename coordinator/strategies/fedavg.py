"""FedAvg: the sample-weighted mean of the devices' deltas (McMahan et al. 2017).

For face models each device also trains its own class embedding w_c with the
positive-only loss; FedAvg stores the rows as they come and does nothing to
keep them apart, which is why it collapses with one identity per device."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from coordinator.strategies.base import Accumulator, AggregationResult, Strategy, StrategyParams
from coordinator.strategies.collapse import mean_offdiagonal_cosine, normalise_rows
from coordinator.strategies.discriminant import discriminant_transform, fold_into_embedding
from fedface_common.client_params import PositiveLossClientParams
from fedface_common.tensors import TensorInfo, TensorSpec
from fedface_common.wire import (
    EMBEDDING_BN_MEAN,
    EMBEDDING_BN_VAR,
    EMBEDDING_PROJECTION,
    HEAD_MEAN,
    HEAD_SECOND_MOMENT,
    HEAD_WITHIN_SCATTER,
)


class PositiveLossParams(StrategyParams, PositiveLossClientParams):
    """The positive-only loss (FedAwS/FedFace): the devices' settings, and the discriminant's shrinkage."""

    embedding_lda_shrinkage: float = Field(
        default=0.1, ge=0, le=100,
        description="Multiple of the within-class scatter's mean eigenvalue added to its diagonal before LDA",
    )


class FedAvgStrategy(Strategy):
    name: ClassVar[str] = "fedavg"
    Params = PositiveLossParams
    uses_class_embeddings: ClassVar[bool] = True
    params: PositiveLossParams

    def update_spec(self, model_spec: TensorSpec, embedding_dim: int | None) -> TensorSpec:
        spec = super().update_spec(model_spec, embedding_dim)
        dims = self.params.embedding_lda_dims
        if dims is None:
            return spec
        projection = model_spec.get(EMBEDDING_PROJECTION)
        if projection is None or len(projection.shape) < 2:
            raise ValueError(f"embedding_lda_dims needs a model with a projection {EMBEDDING_PROJECTION!r}")
        width, c = projection.shape[0], int(np.prod(projection.shape[1:]))
        if dims > min(width, c):
            raise ValueError(f"embedding_lda_dims {dims} exceeds the model's embedding ({width}) or head ({c}) width")
        spec[HEAD_MEAN] = TensorInfo("F32", (c,))
        for name in (HEAD_SECOND_MOMENT, HEAD_WITHIN_SCATTER):
            spec[name] = TensorInfo("F32", (c, c))
        return spec

    def statistics_tensors(self) -> frozenset[str]:
        p = self.params
        names: tuple[str, ...] = (EMBEDDING_BN_MEAN, EMBEDDING_BN_VAR) if p.embedding_stats else ()
        if p.embedding_lda_dims is not None:
            names += (HEAD_MEAN, HEAD_SECOND_MOMENT, HEAD_WITHIN_SCATTER)
        return frozenset(names)

    @property
    def replaces_embedding_space(self) -> bool:
        """A discriminant round re-expresses every feature: W rows measured before it mean nothing after."""
        return self.params.embedding_lda_dims is not None

    def aggregate_weights(self, base: Mapping[str, np.ndarray], acc: Accumulator) -> dict[str, np.ndarray]:
        """The mean delta applied, then (with embedding_lda_dims) the discriminant folded in."""
        weights = self.apply_mean_delta(base, acc)
        p = self.params
        if p.embedding_lda_dims is None:
            return weights
        if not all(name in acc.sums for name in (HEAD_MEAN, HEAD_SECOND_MOMENT, HEAD_WITHIN_SCATTER)):
            raise ValueError("embedding_lda_dims is set but the updates carry no head moments")
        mean = acc.sums[HEAD_MEAN] / acc.total_weight
        total = acc.sums[HEAD_SECOND_MOMENT] / acc.total_weight - np.outer(mean, mean)
        within = acc.sums[HEAD_WITHIN_SCATTER] / acc.total_weight
        transform = discriminant_transform(total, within, p.embedding_lda_dims, p.embedding_lda_shrinkage)
        return fold_into_embedding(weights, transform, mean)

    def finalize(
        self, base: Mapping[str, np.ndarray], acc: Accumulator, class_embeddings: Mapping[uuid.UUID, np.ndarray]
    ) -> AggregationResult:
        weights = self.aggregate_weights(base, acc)
        rows = dict(class_embeddings)
        rows.update(acc.rows)
        metrics = self.collapse_metrics(rows, acc)
        if self.replaces_embedding_space:
            return AggregationResult(weights=weights, class_embeddings={}, metrics=metrics,
                                     replaces_class_embeddings=True)
        return AggregationResult(weights=weights, class_embeddings=self._normalised(acc.rows), metrics=metrics)

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
