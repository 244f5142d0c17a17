"""DP-FedAvg at the strategy level: clipping bounds each device, the noise has the stated scale and is added
once, adaptive clipping finds its quantile, and algorithms that read per-device values refuse DP."""

from __future__ import annotations

import math
import uuid
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.engine.partials import decode_accumulator, encode_accumulator
from coordinator.strategies import Accumulator, make_strategy
from coordinator.strategies.base import StrategyConfigError
from coordinator.strategies.dp import DeviceNoise, DpAggregation, plan_round

SHAPES = {"a.weight": (40, 25), "a.bias": (25,), "b.weight": (7,)}


def _dp_aggregation(dp: dict[str, Any], expected: int, algorithm: str = "fedavg-plain",
                    rng: np.random.Generator | None = None, carried: float | None = None,
                    extra: dict[str, Any] | None = None) -> DpAggregation:
    strategy = make_strategy(algorithm, {"dp": dp, **(extra or {})})
    assert strategy.params.dp is not None
    state = plan_round(strategy.params.dp, expected, carried).to_json()
    return DpAggregation(strategy, state, rng=rng)


def _update(rng: np.random.Generator, norm: float) -> dict[str, np.ndarray]:
    raw = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
    scale = norm / math.sqrt(sum(float(np.sum(v * v)) for v in raw.values()))
    return {k: (v * scale).astype(np.float32) for k, v in raw.items()}


def _norm(tensors: dict[str, np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum(np.asarray(v, dtype=np.float64) ** 2)) for v in tensors.values()))


@settings(max_examples=60, deadline=None)
@given(clip=st.floats(1e-3, 1e3), norm=st.floats(0, 1e8), samples=st.integers(1, 100_000), seed=st.integers(0, 2**32))
def test_clipping_bounds_each_devices_contribution(clip: float, norm: float, samples: int, seed: int) -> None:
    """Adding one device moves the sum by at most C and the weight by exactly 1, whatever it sends or claims."""
    agg = _dp_aggregation({"noise_multiplier": 1.0, "clip": clip}, expected=10)
    rng = np.random.default_rng(seed)
    before = Accumulator()
    agg.fold(before, uuid.uuid4(), _update(rng, 1.0), 7)
    after = Accumulator()
    after.merge(before)
    agg.fold(after, uuid.uuid4(), _update(rng, norm), samples)
    moved = _norm({k: after.sums[k] - before.sums[k] for k in after.sums})
    assert moved <= clip * (1 + 1e-5)
    assert after.total_weight - before.total_weight == 1.0


def test_frozen_tensors_are_neither_summed_nor_noised() -> None:
    agg = _dp_aggregation({"noise_multiplier": 1.0, "clip": 1.0}, expected=1, algorithm="fedface-private",
                          rng=np.random.default_rng(0), extra={"frozen": ["a."]})
    acc = Accumulator()
    agg.fold(acc, uuid.uuid4(), _update(np.random.default_rng(1), 0.5), 3)
    assert set(acc.sums) == {"b.weight"}
    base = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    out = agg.finalize(base, acc, {}).weights
    assert not out["a.weight"].any() and not out["a.bias"].any() and out["b.weight"].any()


def test_noise_has_the_stated_standard_deviation_and_is_added_once() -> None:
    """Zero updates, so the new model is base + noise / m: its spread is z C / m, whatever the number of
    partial sums the updates were folded into (the noise is added at finalize, never per partial)."""
    z, clip, m, n = 1.7, 0.3, 12, 400_000
    base = {"w": np.zeros(n, np.float64)}
    stds = []
    for partials in (1, 3):
        agg = _dp_aggregation({"noise_multiplier": z, "clip": clip}, expected=m, rng=np.random.default_rng(2024))
        accs = [Accumulator() for _ in range(partials)]
        for i in range(m):
            agg.fold(accs[i % partials], uuid.uuid4(), {"w": np.zeros(n, np.float32)}, 1 + i)
        acc = Accumulator()
        for part in accs:  # through the partial sums' own encoding, as replicas persist them
            acc.merge(decode_accumulator(encode_accumulator(part)))
        result = agg.finalize(base, acc, {})
        step = result.weights["w"]
        assert abs(float(step.mean())) < 5 * z * clip / m / math.sqrt(n)
        stds.append(float(step.std()) * m)
        assert result.metrics["dp"]["noise_stddev"] == pytest.approx(z * clip)
        assert "robust" not in result.metrics and "total_samples" not in result.metrics
    # The sample std of n normals is within 1% of sigma with overwhelming probability at n = 400k (sd 0.11%).
    assert stds == [pytest.approx(z * clip, rel=0.01)] * 2


def test_the_mean_is_the_clipped_unit_weight_sum_over_the_fixed_denominator() -> None:
    """Without the noise the step is sum(clip(u_i)) / target_devices: sample counts play no part."""
    rng = np.random.default_rng(3)
    updates = [_update(rng, norm) for norm in (0.2, 0.9, 5.0, 40.0)]
    strategy = make_strategy("fedavg-plain", {"dp": {"noise_multiplier": 1.0, "clip": 1.0}})
    assert strategy.params.dp is not None
    agg = DpAggregation(strategy, {**plan_round(strategy.params.dp, 5, None).to_json(), "sum_noise_multiplier": 0.0})
    acc = Accumulator()
    for u, samples in zip(updates, (1, 10, 100, 1000), strict=True):
        agg.fold(acc, uuid.uuid4(), u, samples)
    base = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    got = agg.finalize(base, acc, {}).weights
    for k in SHAPES:
        clipped = [u[k].astype(np.float64) * min(1.0, 1.0 / _norm(u)) for u in updates]
        np.testing.assert_allclose(got[k], np.sum(clipped, axis=0) / 5, atol=1e-6)


def test_adaptive_clip_noise_split_keeps_the_composed_multiplier() -> None:
    """Andrew et al.: the update noise z_sum and the count noise sigma_b compose to the accountant's z."""
    agg = _dp_aggregation({"noise_multiplier": 1.0, "clip": "adaptive", "clip_count_stddev": 2.0}, expected=40)
    z_sum, sigma_b = agg.plan.sum_noise_multiplier, agg.plan.clip_count_stddev
    assert sigma_b == 2.0 and z_sum > 1.0
    assert (z_sum ** -2 + (2 * sigma_b) ** -2) ** -0.5 == pytest.approx(1.0)
    # sigma_b defaults to target_devices / 20 and must leave room for the update noise.
    assert _dp_aggregation({"noise_multiplier": 1.0}, expected=100).plan.clip_count_stddev == 5.0
    with pytest.raises(StrategyConfigError, match="clip_count_stddev"):
        _dp_aggregation({"noise_multiplier": 1.0}, expected=10)


@pytest.mark.parametrize(("quantile", "start"), [(0.5, 0.05), (0.5, 20.0), (0.8, 0.05)])
def test_adaptive_clipping_moves_the_clip_to_the_target_quantile(quantile: float, start: float) -> None:
    """Update norms are log-normal (median 1); from far below or above, the clip carried from round to round
    settles near the target quantile of the norms."""
    rng = np.random.default_rng(11)
    m, sigma = 100, 0.5
    dp = {"noise_multiplier": 1.0, "clip": "adaptive", "initial_clip": start, "target_quantile": quantile,
          "clip_learning_rate": 0.5}
    clips, carried = [], None
    for _ in range(50):
        agg = _dp_aggregation(dp, expected=m, rng=rng, carried=carried)
        acc = Accumulator()
        for norm in rng.lognormal(0.0, sigma, size=m):
            agg.fold(acc, uuid.uuid4(), _update(rng, float(norm)), 1)
        dp_metrics = agg.finalize({k: np.zeros(s, np.float32) for k, s in SHAPES.items()}, acc, {}).metrics["dp"]
        clips.append(dp_metrics["clip"])
        carried = dp_metrics["next_clip"]
    target = math.exp(sigma * {0.5: 0.0, 0.8: 0.8416}[quantile])
    assert clips[0] == start
    # It heads toward the target from the start, and ends near it.
    assert abs(math.log(clips[5] / target)) < abs(math.log(start / target))
    assert np.median(clips[-10:]) == pytest.approx(target, rel=0.25)


@pytest.mark.parametrize("algorithm", ["fedface", "fedavg"])
def test_dp_is_refused_for_algorithms_that_read_class_embeddings(algorithm: str) -> None:
    with pytest.raises(StrategyConfigError, match="class embedding"):
        make_strategy(algorithm, {"dp": {"noise_multiplier": 1.0}})


def test_dp_is_refused_with_order_statistics() -> None:
    with pytest.raises(StrategyConfigError, match="aggregation must be 'mean'"):
        make_strategy("fedavg-plain", {"dp": {"noise_multiplier": 1.0}, "robust": {"aggregation": "median"}})


def test_dp_needs_nothing_new_on_the_devices() -> None:
    plain = make_strategy("fedface-private")
    private = make_strategy("fedface-private", {"dp": {"noise_multiplier": 1.0, "clip": 0.5}})
    assert private.client_params() == plain.client_params()


def test_distributed_dp_needs_secure_aggregation() -> None:
    dp = {"mode": "distributed", "noise_multiplier": 1.0, "clip": 1.0}
    for extra in ({}, {"secagg": {"enabled": False}}):
        with pytest.raises(StrategyConfigError, match=r"distributed.*secagg"):
            make_strategy("fedavg-plain", {"dp": dp, **extra})
    secure = make_strategy("fedface-private", {"dp": dp, "secagg": {"clip_norm": 1.0}})
    assert secure.params.dp is not None and secure.params.dp.mode == "distributed"
    assert secure.client_params() == make_strategy("fedface-private").client_params()


def _distributed(rng: np.random.Generator | None = None, device_noise: DeviceNoise | None = None) -> DpAggregation:
    strategy = make_strategy("fedavg-plain", {"dp": {"mode": "distributed", "noise_multiplier": 2.0, "clip": 0.5},
                                              "secagg": {"clip_norm": 0.5}})
    assert strategy.params.dp is not None
    return DpAggregation(strategy, plan_round(strategy.params.dp, 8, None).to_json(), rng=rng,
                         device_noise=device_noise)


def test_in_distributed_mode_the_server_adds_nothing_and_checks_the_devices_share() -> None:
    """The unmasked sum already carries the devices' noise: the committed step is that sum over the fixed
    denominator, bit for bit, and the metrics say who added what."""
    sums = {"w": np.random.default_rng(4).standard_normal(1000)}
    base = {"w": np.zeros(1000, np.float32)}
    sigma_dev = 2.0 * 0.5 / math.sqrt(6)
    agg = _distributed(np.random.default_rng(5), DeviceNoise(stddev=sigma_dev, min_inputs=6, inputs=7))
    result = agg.finalize(base, Accumulator(sums={"w": sums["w"].copy()}, total_weight=7.0, count=7), {})
    np.testing.assert_array_equal(result.weights["w"], (sums["w"] / 8).astype(np.float32))
    dp = result.metrics["dp"]
    assert dp["mode"] == "distributed" and dp["server_noise_stddev"] == 0
    assert dp["device_noise_stddev"] == sigma_dev and dp["min_survivors"] == 6 and dp["survivors"] == 7
    assert dp["noise_stddev"] == pytest.approx(sigma_dev * math.sqrt(7)) and dp["noise_multiplier"] == 2.0


@pytest.mark.parametrize(("noise", "why"), [
    (None, "secure aggregation"),  # a distributed round's sum that did not come through secure aggregation
    (DeviceNoise(stddev=0.9 * 2.0 * 0.5 / math.sqrt(6), min_inputs=6, inputs=7), "accounts"),  # too little noise
    (DeviceNoise(stddev=2.0 * 0.5 / math.sqrt(6), min_inputs=6, inputs=5), "accounts"),  # fewer inputs than m
])
def test_a_distributed_sum_noised_below_the_plan_is_refused(noise: DeviceNoise | None, why: str) -> None:
    agg = _distributed(device_noise=noise)
    with pytest.raises(ValueError, match=why):
        agg.finalize({"w": np.zeros(3, np.float32)}, Accumulator(sums={"w": np.zeros(3)}, total_weight=7, count=7), {})


def test_central_mode_refuses_device_noise() -> None:
    strategy = make_strategy("fedavg-plain", {"dp": {"noise_multiplier": 1.0, "clip": 1.0}})
    assert strategy.params.dp is not None
    agg = DpAggregation(strategy, plan_round(strategy.params.dp, 2, None).to_json(),
                        device_noise=DeviceNoise(stddev=1.0, min_inputs=2, inputs=2))
    with pytest.raises(ValueError, match="central"):
        agg.finalize({"w": np.zeros(3, np.float32)}, Accumulator(sums={"w": np.zeros(3)}, total_weight=2, count=2), {})
