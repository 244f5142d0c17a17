"""FedFace (Aggarwal, Zhou, Jain 2021): FedAvg on the backbone, each
participant's row of W replaced by the one it trained, then a few SGD steps of
the spreadout regulariser over all of W at the server."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import ClassVar

import numpy as np
from pydantic import Field

from coordinator.strategies.base import Accumulator, AggregationResult, StrategyParams
from coordinator.strategies.collapse import mean_offdiagonal_cosine
from coordinator.strategies.fedavg import FedAvgStrategy, PositiveLossParams
from coordinator.strategies.plain import PlainFedAvgStrategy
from coordinator.strategies.spreadout import spreadout_loss, spreadout_steps
from fedface_common.client_params import PrivateClientParams


class FedFaceParams(PositiveLossParams):
    tau: float = Field(default=0.3, ge=-1, le=1, description="Spreadout margin on cosine similarity")
    spreadout_steps: int = Field(default=10, ge=0, le=10_000)
    spreadout_lr: float = Field(default=0.01, gt=0, le=1e6)
    spreadout_momentum: float = Field(default=0.9, ge=0, lt=1)
    knn: int | None = Field(default=None, ge=1, description="Only each row's k nearest rows (large populations)")


class FedFaceStrategy(FedAvgStrategy):
    name: ClassVar[str] = "fedface"
    Params = FedFaceParams

    def finalize(
        self, base: Mapping[str, np.ndarray], acc: Accumulator, class_embeddings: Mapping[uuid.UUID, np.ndarray]
    ) -> AggregationResult:
        p: FedFaceParams = self.params  # type: ignore[assignment]
        weights = self.aggregate_weights(base, acc)
        rows = dict(class_embeddings)
        rows.update(acc.rows)
        metrics = self.collapse_metrics(rows, acc)
        if self.replaces_embedding_space:
            return AggregationResult(weights=weights, class_embeddings={}, metrics=metrics,
                                     replaces_class_embeddings=True)
        # A secure (statistics) round receives no row of W: the stored rows stay as they were.
        if not rows or self.secure:
            return AggregationResult(weights=weights, class_embeddings={}, metrics=metrics)
        ids = sorted(rows)  # a fixed order: the result must not depend on arrival order
        w = np.stack([rows[i] for i in ids]).astype(np.float64)
        w /= np.linalg.norm(w, axis=1, keepdims=True)
        metrics["spreadout_before"] = spreadout_loss(w, p.tau, p.knn)
        w = spreadout_steps(w, p.tau, p.spreadout_steps, p.spreadout_lr, p.spreadout_momentum, p.knn)
        w /= np.linalg.norm(w, axis=1, keepdims=True)
        metrics["spreadout_after"] = spreadout_loss(w, p.tau, p.knn)
        metrics["w_mean_offdiag_cos_after_spreadout"] = mean_offdiagonal_cosine(w)
        new_rows = {i: w[k].astype(np.float32) for k, i in enumerate(ids)}
        return AggregationResult(weights=weights, class_embeddings=new_rows, metrics=metrics)


class PrivateParams(StrategyParams, PrivateClientParams):
    """Client-side CosFace over the device's own w_c and its nearest public centres."""


class FedFacePrivateStrategy(PlainFedAvgStrategy):
    """W never leaves the devices: the server only averages backbone deltas and
    ships the public class centres of pretraining as negatives. Needing only the
    sum, it runs under secure aggregation and DP in every round (docs/privacy.md)."""

    name: ClassVar[str] = "fedface-private"
    Params = PrivateParams
    uses_class_embeddings: ClassVar[bool] = False
    ships_class_centres: ClassVar[bool] = True


