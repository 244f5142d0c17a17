"""What one device can do to a round, bounded: the same for every strategy.

A wrapper around any strategy's fold and finalize (in the spirit of Flower's
DP wrapper strategies), so each algorithm gains the bounds at once:

- each update's delta is clipped to an L2 norm bound (fixed by the operator,
  or adaptive: a multiple of the median norm of the round's first accepted
  updates, fixed once and stored with the round so every replica folds with
  the same bound);
- the sample count a device claims weighs at most a cap (fixed, or a multiple
  of the same window's median count);
- optionally the coordinate-wise trimmed mean or median replaces the mean.
  Those need every update at once: memory O(devices x model), so replicas
  fold no partial sums for them and the whole round is folded at close.

Norms are taken in float64 over every tensor but the class embedding: a finite
float32 update cannot overflow there (3.4e38^2 x 1e9 values < 1e308)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from coordinator.strategies.base import Accumulator, AggregationResult, Strategy
from coordinator.strategies.robust_params import MIN_CLASS_EMBEDDING_NORM, RobustParams
from fedface_common.update_codec import Encoding
from fedface_common.wire import CLASS_EMBEDDING_TENSOR


@dataclass(frozen=True)
class RoundBounds:
    """The bounds a round folds with; None means unbounded."""

    norm_bound: float | None
    sample_cap: float | None

    @classmethod
    def fixed(cls, p: RobustParams) -> RoundBounds | None:
        """The bounds when nothing in them is adaptive; None when the round's own updates must set them."""
        if p.adaptive:
            return None
        return cls(_fixed(p.norm_bound), _fixed(p.sample_cap))

    @classmethod
    def from_window(cls, p: RobustParams, norms: Sequence[float], counts: Sequence[int]) -> RoundBounds:
        """Adaptive bounds from the window's (delta norm, sample count) pairs.

        Zero deltas say nothing about an honest update's size (a device whose loss is
        already zero sends one), so the norm median is over the non-zero ones."""
        nonzero = [n for n in norms if n > 0]
        if p.norm_bound == "adaptive":
            norm_bound: float | None = p.norm_multiplier * float(np.median(nonzero)) if nonzero else 0.0
        else:
            norm_bound = _fixed(p.norm_bound)
        if p.sample_cap == "adaptive":
            sample_cap = max(1.0, p.sample_multiplier * float(np.median(counts))) if counts else None
        else:
            sample_cap = _fixed(p.sample_cap)
        return cls(norm_bound, sample_cap)

    def to_json(self) -> dict[str, float | None]:
        return {"norm_bound": self.norm_bound, "sample_cap": self.sample_cap}


def _fixed(value: float | str) -> float | None:
    return None if isinstance(value, str) else float(value)


def update_norm(update: Mapping[str, np.ndarray]) -> float:
    """L2 norm of everything an update moves but its class embedding, in float64."""
    total = 0.0
    for name, values in update.items():
        if name != CLASS_EMBEDDING_TENSOR:
            flat = np.asarray(values, dtype=np.float64).ravel()
            total += float(flat @ flat)
    return float(np.sqrt(total))


def class_embedding_norm(update: Mapping[str, np.ndarray]) -> float | None:
    row = update.get(CLASS_EMBEDDING_TENSOR)
    return None if row is None else float(np.linalg.norm(np.asarray(row, dtype=np.float64)))


class BoundedAggregation:
    """Any strategy, folding clipped deltas at capped weights; the strategy itself is unchanged."""

    def __init__(self, strategy: Strategy, params: RobustParams, bounds: RoundBounds) -> None:
        self.strategy, self.params, self.bounds = strategy, params, bounds

    @property
    def update_encoding(self) -> Encoding:
        return self.strategy.update_encoding

    def fold(self, acc: Accumulator, device_id: uuid.UUID, update: Mapping[str, np.ndarray], num_samples: int) -> None:
        norm, bound, cap = update_norm(update), self.bounds.norm_bound, self.bounds.sample_cap
        deltas = dict(update)
        if bound is not None and norm > bound:
            factor = bound / norm  # norm > bound >= 0, so factor is finite and in [0, 1)
            deltas = {k: v if k == CLASS_EMBEDDING_TENSOR else (v * factor).astype(np.float32)
                      for k, v in update.items()}
            acc.clipped += 1
        if CLASS_EMBEDDING_TENSOR in deltas:  # refused at intake below MIN_CLASS_EMBEDDING_NORM
            row = np.asarray(deltas[CLASS_EMBEDDING_TENSOR], dtype=np.float64)
            deltas[CLASS_EMBEDDING_TENSOR] = (row / max(float(np.linalg.norm(row)), MIN_CLASS_EMBEDDING_NORM)).astype(
                np.float32)
        weight = float(num_samples)
        if cap is not None and weight > cap:
            weight = cap
            acc.capped += 1
        if self.params.streaming:
            self.strategy.fold(acc, device_id, deltas, weight)
            return
        # Order statistics need each update: keep the clipped deltas, fold only the weight and the W row.
        self.strategy.fold(acc, device_id, {k: v for k, v in deltas.items() if k == CLASS_EMBEDDING_TENSOR}, weight)
        acc.stacked.append({k: v for k, v in deltas.items() if k != CLASS_EMBEDDING_TENSOR})

    def finalize(self, base: Mapping[str, np.ndarray], acc: Accumulator,
                 class_embeddings: Mapping[uuid.UUID, np.ndarray]) -> AggregationResult:
        if not self.params.streaming and acc.stacked:
            # The strategy applies sums / total_weight: store the robust centre times the weight.
            for name in acc.stacked[0]:
                centre = coordinate_centre([u[name] for u in acc.stacked], self.params)
                acc.sums[name] = centre * acc.total_weight
        result = self.strategy.finalize(base, acc, class_embeddings)
        robustness: dict[str, Any] = {**self.bounds.to_json(), "clipped": acc.clipped, "capped": acc.capped,
                                      "aggregation": self.params.aggregation}
        result.metrics = {**result.metrics, "robust": robustness}
        return result


def coordinate_centre(values: Sequence[np.ndarray], p: RobustParams) -> np.ndarray:
    """Coordinate-wise median or trimmed mean of equally shaped arrays, in float64."""
    stack = np.stack([np.asarray(v, dtype=np.float64) for v in values])
    if p.aggregation == "median":
        return np.asarray(np.median(stack, axis=0))
    cut = int(p.trim_fraction * len(values))
    if cut == 0:
        return np.asarray(stack.mean(axis=0))
    ordered = np.sort(stack, axis=0)
    return np.asarray(ordered[cut:len(values) - cut].mean(axis=0))
