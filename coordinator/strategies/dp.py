"""DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models") around any
strategy whose server step needs only the sum of the updates (fedavg-plain, fedface-private).

It is the bounded aggregation of coordinator/strategies/robust.py with three changes:

- every device's update is clipped to the round's L2 bound C, over everything it moves (tensors under the
  strategy's `frozen` prefixes are dropped first: what is not noised must not be released);
- every device weighs 1, whatever sample count it claims. A sample-weighted mean lets one device's weight
  grow with its claim, so the sum's sensitivity would be (largest weight) x C, and the claim itself is data
  about the device. With unit weights adding or removing one device moves the sum by at most C;
- the mean divides the noised sum by the round's target device count, a fixed denominator: dividing by the
  number that actually arrived would release that number, which depends on whether a given device took part.

Gaussian noise N(0, (z_sum C)^2) is added to the sum once: in central mode in float64 at finalize (after the
replicas' partial sums are merged), in distributed mode by the devices under secure aggregation, each a share
N(0, (z_sum C)^2 / m) for m the fewest inputs the server unmasks (coordinator/strategies/dp_noise.py; the
server then adds nothing and checks that the devices were told enough). With a fixed clip z_sum = z, the
noise multiplier the accountant composes. With the adaptive clip (Andrew et al. 2021, "Differentially
Private Learning with Adaptive Clipping") the round also releases a noised count of unclipped updates,
N(0, sigma_b^2) on a query of sensitivity 1/2, and the two Gaussian releases together equal one of
multiplier z when z_sum = (z^-2 - (2 sigma_b)^-2)^-1/2; the next round's clip is C exp(-eta_C (b - gamma)),
b the noised unclipped fraction, gamma the target quantile.

The robust settings' norm bound and sample cap give way to the DP clip and unit weights; order statistics
are refused with DP (StrategyParams), and so are strategies that read one device's values (class embeddings)."""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from coordinator.strategies.base import Accumulator, AggregationResult, Strategy, StrategyConfigError
from coordinator.strategies.dp_noise import add_gaussian, fresh_generator, noise_shares
from coordinator.strategies.dp_params import DpMode, DpParams
from coordinator.strategies.robust import BoundedAggregation, RoundBounds
from coordinator.strategies.robust_params import RobustParams

# The adaptive clip stays within what the robust bound accepts and never reaches zero.
MIN_CLIP, MAX_CLIP = 1e-12, 1e30


@dataclass(frozen=True)
class DpRoundPlan:
    """What one DP round folds and noises with, fixed when the round starts and stored with it."""

    mode: DpMode
    clip: float
    noise_multiplier: float  # z: what the accountant composes for this round
    sum_noise_multiplier: float  # z_sum: the noise on the update sum, in units of the clip
    expected_devices: int  # the fixed denominator
    adaptive: bool
    target_quantile: float
    clip_learning_rate: float
    clip_count_stddev: float | None  # sigma_b, only with the adaptive clip

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, state: Mapping[str, Any]) -> DpRoundPlan:
        return cls(**{name: state[name] for name in cls.__dataclass_fields__})


def plan_round(params: DpParams, expected_devices: int, carried_clip: float | None) -> DpRoundPlan:
    """The round's plan; `carried_clip` is the adaptive clip the last adaptive DP round left, if any."""
    z = params.noise_multiplier
    if not params.adaptive:
        assert not isinstance(params.clip, str)
        return DpRoundPlan(mode=params.mode, clip=float(params.clip), noise_multiplier=z, sum_noise_multiplier=z,
                           expected_devices=expected_devices, adaptive=False, target_quantile=params.target_quantile,
                           clip_learning_rate=params.clip_learning_rate, clip_count_stddev=None)
    sigma_b = params.clip_count_stddev if params.clip_count_stddev is not None else expected_devices / 20
    if not 2 * sigma_b > z:
        raise StrategyConfigError(
            f"dp.clip_count_stddev ({sigma_b:g}{' = target_devices / 20' if params.clip_count_stddev is None else ''})"
            f" must exceed noise_multiplier / 2 ({z / 2:g}): the noised count of unclipped updates spends part of"
            " the round's budget, and with less noise on it nothing is left for the updates. Raise"
            " dp.clip_count_stddev or target_devices, or set a fixed dp.clip")
    z_sum = (z ** -2 - (2 * sigma_b) ** -2) ** -0.5
    clip = carried_clip if carried_clip is not None else params.initial_clip
    return DpRoundPlan(mode=params.mode, clip=float(clip), noise_multiplier=z, sum_noise_multiplier=z_sum,
                       expected_devices=expected_devices, adaptive=True, target_quantile=params.target_quantile,
                       clip_learning_rate=params.clip_learning_rate, clip_count_stddev=sigma_b)


@dataclass(frozen=True)
class DeviceNoise:
    """What the devices of a distributed-DP round added: the secure round's public parameters, and how many
    inputs the unmasked sum holds."""

    stddev: float  # each device's, SecAggParams.noise_stddev
    min_inputs: int  # m, SecAggParams.min_survivors
    inputs: int  # s, the survivors summed


class DpAggregation(BoundedAggregation):
    """Bounded aggregation with the DP clip as its norm bound, unit weights and noise on the sum.

    `device_noise` is required in distributed mode (the secure round's sum already carries the noise) and
    refused otherwise."""

    def __init__(self, strategy: Strategy, state: Mapping[str, Any], rng: np.random.Generator | None = None,
                 device_noise: DeviceNoise | None = None) -> None:
        self.plan = DpRoundPlan.from_json(state)
        self.device_noise = device_noise
        super().__init__(strategy, RobustParams(norm_bound=self.plan.clip, sample_cap="off"),
                         RoundBounds(norm_bound=self.plan.clip, sample_cap=None))
        self.state = dict(state)
        self.frozen = tuple(getattr(strategy.params, "frozen", ()) or ())
        self._rng = rng

    def fold(self, acc: Accumulator, device_id: uuid.UUID, update: Mapping[str, np.ndarray], num_samples: int) -> None:
        kept = {k: v for k, v in update.items() if not (self.frozen and k.startswith(self.frozen))}
        super().fold(acc, device_id, kept, 1)

    def finalize(self, base: Mapping[str, np.ndarray], acc: Accumulator,
                 class_embeddings: Mapping[uuid.UUID, np.ndarray]) -> AggregationResult:
        if acc.count == 0:
            raise ValueError("no updates to aggregate")
        plan = self.plan
        rng = self._rng if self._rng is not None else fresh_generator()
        outcome = self._noise_outcome()
        noised = Accumulator(sums=add_gaussian(acc.sums, outcome["server_noise_stddev"], rng),
                             total_weight=float(plan.expected_devices), count=acc.count)
        outcome["noised_coordinates"] = int(sum(v.size for v in noised.sums.values()))
        if plan.adaptive:
            outcome.update(self._next_clip(acc, rng))
        result = super().finalize(base, noised, class_embeddings)
        # Exact counts of clipped updates or samples would be releases the accountant does not cover.
        metrics = {k: v for k, v in result.metrics.items() if k not in ("robust", "total_samples")}
        result.metrics = {**metrics, "dp": {**self.state, **outcome}}
        return result

    def _noise_outcome(self) -> dict[str, Any]:
        """Who adds which noise, as the metrics record it; `noise_stddev` is the noise the sum carries.

        In distributed mode the devices' share must be at least what the plan accounts, over a sum of at
        least m inputs: anything less would release a sum noised below the epsilon the ledger records."""
        plan, devices = self.plan, self.device_noise
        sum_stddev = plan.sum_noise_multiplier * plan.clip
        if plan.mode != "distributed":
            if devices is not None:
                raise ValueError(f"a {plan.mode} DP round does not take the devices' noise")
            shares = noise_shares(plan.mode, sum_stddev)
            return {"noise_stddev": shares.server_stddev, "server_noise_stddev": shares.server_stddev}
        if devices is None:
            raise ValueError("a distributed DP round needs the devices' noise: its sum must come from secure"
                             " aggregation")
        shares = noise_shares(plan.mode, sum_stddev, devices.min_inputs)
        if devices.stddev < shares.device_stddev * (1 - 1e-9) or devices.inputs < devices.min_inputs:
            raise ValueError(f"the devices added noise of stddev {devices.stddev:g} to a sum of {devices.inputs}"
                             f" inputs; the round accounts {shares.device_stddev:g} each over at least"
                             f" {devices.min_inputs}")
        return {"noise_stddev": devices.stddev * math.sqrt(devices.inputs),
                "server_noise_stddev": shares.server_stddev, "device_noise_stddev": devices.stddev,
                "min_survivors": devices.min_inputs, "survivors": devices.inputs}

    def _next_clip(self, acc: Accumulator, rng: np.random.Generator) -> dict[str, float]:
        """Andrew et al.'s geometric step, from the noised count of updates the clip left whole.

        The count is centred (b_i - 1/2, sensitivity 1/2) and 1/2 added back over the fixed denominator, so the
        estimate needs no exact number of participants."""
        plan = self.plan
        assert plan.clip_count_stddev is not None
        unclipped = acc.count - acc.clipped
        centred = unclipped - acc.count / 2 + float(rng.normal(0.0, plan.clip_count_stddev))
        fraction = centred / plan.expected_devices + 0.5
        step = math.exp(-plan.clip_learning_rate * (fraction - plan.target_quantile))
        return {"unclipped_fraction": fraction, "next_clip": min(MAX_CLIP, max(MIN_CLIP, plan.clip * step))}
