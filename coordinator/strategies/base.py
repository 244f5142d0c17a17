"""The strategy interface, after Flower's: a strategy configures a round for
the clients and aggregates the round's updates. It performs no I/O; the round
engine streams updates into its accumulator one at a time, so memory stays
O(model size) whatever the number of devices."""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from pydantic import ConfigDict, Field, ValidationError, model_validator

from coordinator.strategies.dp_params import DpParams
from coordinator.strategies.robust_params import RobustParams
from fedface_common.client_params import CLIENT_PARAMS, ClientParams
from fedface_common.secagg.task import SecAggSettings
from fedface_common.tensors import TensorInfo, TensorSpec
from fedface_common.update_codec import Encoding, wire_spec
from fedface_common.wire import CLASS_EMBEDDING_TENSOR, EMBEDDING_BN_MEAN, EMBEDDING_BN_VAR


class StrategyConfigError(ValueError):
    pass


class StrategyParams(ClientParams):
    """The devices' settings (fedface_common.client_params) and what only the server reads."""

    model_config = ConfigDict(extra="forbid")

    server_lr: float = Field(
        default=1.0, gt=0, le=100,
        description="Step along the mean delta (FedOpt's server learning rate; 1 is plain FedAvg). Deltas of"
        " one-identity devices point in many directions and partly cancel in the mean; a larger step restores"
        " the size of a round's progress",
    )
    robust: RobustParams = Field(
        default_factory=RobustParams,
        description="What one device's update can weigh: norm bound, sample cap, mean or order statistic"
        " (coordinator/strategies/robust.py); on by default",
    )
    dp: DpParams | None = Field(
        default=None,
        description="Differential privacy (DP-FedAvg: per-device clipping, unit weights, Gaussian noise on the"
        " sum; coordinator/strategies/dp.py); off when absent",
    )
    secagg: SecAggSettings | None = Field(
        default=None,
        description="Secure aggregation (SecAgg+): the server learns only the sum of the devices' clipped"
        " updates (coordinator/services/secagg/); off when absent",
    )

    @model_validator(mode="after")
    def _dp_needs_the_mean(self) -> StrategyParams:
        if self.dp is not None and not self.robust.streaming:
            raise ValueError("dp protects the mean of clipped updates: robust.aggregation must be 'mean' (a trimmed"
                             " mean or median reads individual updates, which the noise does not cover)")
        if self.secagg is not None and self.secagg.enabled and not self.robust.streaming:
            raise ValueError("secagg hides each update: robust.aggregation must be 'mean' (an order statistic"
                             " reads individual updates)")
        secure = self.secagg is not None and self.secagg.enabled
        # Without secure aggregation the server would see each device's update with only its share of the noise.
        if self.dp is not None and self.dp.mode == "distributed" and not secure:
            raise ValueError("dp.mode 'distributed' needs secagg: each device adds only a share of the noise, which"
                             " protects nothing unless the server sees no more than the sum; enable secagg or use"
                             " dp.mode 'central'")
        # The adaptive clip counts clipped updates, which the server cannot see under secagg.
        if secure and self.dp is not None and self.secagg is not None and (
                isinstance(self.dp.clip, str) or self.secagg.clip_norm > self.dp.clip):
            raise ValueError("with secagg, dp needs a fixed clip and secagg.clip_norm <= dp.clip")
        # DP's sensitivity is C per device and its mean divides by a fixed count: a device's weight may not
        # depend on its own claim, and the denominator may not depend on who took part.
        if secure and self.dp is not None and self.secagg is not None and self.secagg.max_weight is not None:
            raise ValueError("secagg.max_weight cannot run with dp: dp needs unit weights and a fixed denominator")
        return self


@dataclass
class Accumulator:
    """Running, mergeable state of a round's aggregation.

    `sums` hold sample-weighted sums of the deltas in float64, so the result
    does not depend on the order updates arrive in (up to float rounding)."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)
    total_weight: float = 0.0
    count: int = 0
    rows: dict[uuid.UUID, np.ndarray] = field(default_factory=dict)
    clipped: int = 0  # updates whose delta was scaled down to the round's norm bound
    capped: int = 0  # updates whose sample count was capped
    # Each update's clipped deltas, kept only for order-statistic aggregation (never persisted as a partial).
    stacked: list[dict[str, np.ndarray]] = field(default_factory=list)

    def merge(self, other: Accumulator) -> None:
        for name, value in other.sums.items():
            if name in self.sums:
                self.sums[name] += value
            else:
                self.sums[name] = value.copy()
        self.total_weight += other.total_weight
        self.count += other.count
        self.clipped += other.clipped
        self.capped += other.capped
        self.stacked.extend(other.stacked)
        overlap = set(self.rows) & set(other.rows)
        if overlap:
            raise ValueError(f"devices folded twice: {sorted(map(str, overlap))[:3]}")
        self.rows.update(other.rows)


@dataclass
class AggregationResult:
    weights: dict[str, np.ndarray]
    class_embeddings: dict[uuid.UUID, np.ndarray]
    metrics: dict[str, Any]
    # True when the new weights measure features in another space (a discriminant round):
    # the stored W rows are dropped, and each device starts its row again from its photos.
    replaces_class_embeddings: bool = False


class Strategy(ABC):
    name: ClassVar[str]
    Params: ClassVar[type[StrategyParams]] = StrategyParams
    uses_class_embeddings: ClassVar[bool] = False
    ships_class_centres: ClassVar[bool] = False

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        try:
            self.params = self.Params.model_validate(dict(params or {}))
        except ValidationError as exc:
            raise StrategyConfigError(f"invalid {self.name} parameters: {exc.errors(include_url=False)}") from exc
        if self.params.dp is not None and self.uses_class_embeddings:
            # DP-FedAvg protects a sum; a server step that reads one device's values is outside its guarantee.
            raise StrategyConfigError(
                f"{self.name} cannot run with dp: its server step reads each device's own class embedding (a row"
                " of W per device), which no noise on the sum protects; use fedface-private (W stays on the"
                " devices) or fedavg-plain")
        if self.secure:
            self._check_secure()

    def _check_secure(self) -> None:
        statistics = bool(self.statistics_tensors())
        if self.uses_class_embeddings and not statistics:
            raise StrategyConfigError(
                f"{self.name} cannot run with secagg: its server step reads each device's own values (a row of W"
                " per device), which secure aggregation hides; use fedface-private or fedavg-plain, or make the"
                " round a statistics round (embedding_stats or embedding_lda_dims), whose W rows stay on the devices")
        assert self.params.secagg is not None
        clip = self.params.secagg.statistics_clip_norm
        if statistics and clip is None:
            raise StrategyConfigError(
                "secagg.statistics_clip_norm is required: the round's devices send moments (embedding_stats or"
                " embedding_lda_dims), which are clipped and encoded apart from the deltas")
        if not statistics and clip is not None:
            raise StrategyConfigError("secagg.statistics_clip_norm applies only to rounds whose devices send moments"
                                      " (embedding_stats or embedding_lda_dims)")

    def statistics_tensors(self) -> frozenset[str]:
        """The update's tensors that are moments of the devices' photos (averaged, not stepped along)."""
        return frozenset()

    @property
    def secure(self) -> bool:
        """Whether the round's updates are summed under secure aggregation."""
        return self.params.secagg is not None and self.params.secagg.enabled

    # Round configuration -------------------------------------------------------
    def client_params(self) -> dict[str, Any]:
        """Algorithm settings the devices need (they go into the task's training config): exactly the fields of
        the algorithm's client model, which the agent parses with the same model."""
        return self.params.model_dump(include=set(CLIENT_PARAMS.get(self.name, ClientParams).model_fields))

    def update_spec(self, model_spec: TensorSpec, embedding_dim: int | None) -> TensorSpec:
        """What a device's update must contain: an F32 delta per float tensor of
        the model, plus the device's class embedding where the strategy keeps W (not under secagg)."""
        spec = {
            name: TensorInfo("F32", info.shape)
            for name, info in model_spec.items()
            if info.dtype in ("F32", "F16", "F64")
        }
        # Under secure aggregation no row of W leaves its device (only statistics rounds get that far).
        if self.uses_class_embeddings and embedding_dim and not self.secure:
            spec[CLASS_EMBEDDING_TENSOR] = TensorInfo("F32", (embedding_dim,))
        return spec

    def wire_spec(self, model_spec: TensorSpec, embedding_dim: int | None) -> TensorSpec:
        """What a device's update body must hold: `update_spec` in the round's update encoding."""
        return wire_spec(self.update_spec(model_spec, embedding_dim), self.update_encoding)

    @property
    def update_encoding(self) -> Encoding:
        return self.params.update_encoding

    # Aggregation -----------------------------------------------------------------
    def fold(self, acc: Accumulator, device_id: uuid.UUID, update: Mapping[str, np.ndarray],
             num_samples: float) -> None:
        if not num_samples > 0:
            raise ValueError("num_samples must be positive")
        w = float(num_samples)
        for name, delta in update.items():
            if name == CLASS_EMBEDDING_TENSOR:
                continue
            if name not in acc.sums:
                acc.sums[name] = np.zeros(delta.shape, dtype=np.float64)
            # One float64 temporary per tensor, accumulated in place: the sum stays
            # exact to float64 while the fold allocates no more than one model copy.
            acc.sums[name] += np.multiply(delta, w, dtype=np.float64)
        if CLASS_EMBEDDING_TENSOR in update:
            if device_id in acc.rows:
                raise ValueError(f"device {device_id} folded twice")
            acc.rows[device_id] = np.asarray(update[CLASS_EMBEDDING_TENSOR], dtype=np.float32).copy()
        acc.total_weight += w
        acc.count += 1

    def apply_mean_delta(self, base: Mapping[str, np.ndarray], acc: Accumulator) -> dict[str, np.ndarray]:
        """base + server_lr x weighted mean of the deltas; tensors no update touched stay as they were."""
        if acc.count == 0:
            raise ValueError("no updates to aggregate")
        # Moments (the embedding BN's with embedding_stats) are averages to take, not steps to scale.
        statistics = self.statistics_tensors()
        out: dict[str, np.ndarray] = {}
        for name, value in base.items():
            if name in acc.sums:
                step = 1.0 if name in statistics else self.params.server_lr
                mean_delta = acc.sums[name] * (step / acc.total_weight)
                new = value.astype(np.float64) + mean_delta
                if name == EMBEDDING_BN_VAR and name in statistics:
                    new = self._variance_about_new_mean(new, acc)
                # An overflow becomes Inf, which the round engine refuses to commit.
                with np.errstate(over="ignore"):
                    out[name] = new.astype(value.dtype)
            else:
                out[name] = value
        return out

    @staticmethod
    def _variance_about_new_mean(second_moment: np.ndarray, acc: Accumulator) -> np.ndarray:
        """Devices send second moments about the old running mean; the variance about the new mean is
        that minus (new mean - old mean)^2 (parallel axis), so one round gives the population's variance."""
        if EMBEDDING_BN_MEAN in acc.sums:
            shift = acc.sums[EMBEDDING_BN_MEAN] / acc.total_weight
            second_moment = second_moment - shift * shift
        return np.maximum(second_moment, 0.0)  # a bad device must not make the model NaN

    def aggregate_weights(self, base: Mapping[str, np.ndarray], acc: Accumulator) -> dict[str, np.ndarray]:
        """The new weights from the folded updates (the mean delta applied; strategies may add a step)."""
        return self.apply_mean_delta(base, acc)

    @abstractmethod
    def finalize(
        self, base: Mapping[str, np.ndarray], acc: Accumulator, class_embeddings: Mapping[uuid.UUID, np.ndarray]
    ) -> AggregationResult:
        """New weights and W rows from the base model, the folded updates and the current W."""
