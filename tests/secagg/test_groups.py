"""The grouped, weighted encoding of a secure round's input: every coordinate stays within its group's bound
whatever the update and the weight, n inputs sum without wrapping, and the decoded sums, total weight and
weighted mean are within the stated error bounds; layouts and parameters that do not fit are refused, and so
is a sum whose weight coordinate no honest devices give."""

from __future__ import annotations

import secrets

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from coordinator.engine.folding import AggregationError
from coordinator.engine.secagg_sum import _check_mean_norms
from fedface_common.secagg import fixedpoint, groups
from fedface_common.secagg.device import encode_input
from fedface_common.secagg.messages import SecAggParams
from fedface_common.secagg.task import WEIGHT_TENSOR, layout_of, vector_length

SHAPES = {"a.weight": (3, 4), "a.bias": (5,), "m.mean": (6,), "m.moment": (6, 6)}
MOMENTS = {"m.mean", "m.moment"}


def _params(n: int, layout: list, clip: float, stats_clip: float | None = None, max_weight: int | None = None,
            noise: float = 0.0) -> SecAggParams:
    return SecAggParams(
        round_id=1, devices=[f"d{i:03d}" for i in range(n)], neighbours=n - 1, threshold=n // 2 + 1,
        graph_seed=secrets.token_bytes(32), vector_length=vector_length(layout), clip_norm=clip,
        scale=fixedpoint.choose_scale(n, fixedpoint.coordinate_bound(clip, noise)), min_survivors=n // 2 + 1,
        noise_stddev=noise, max_weight=max_weight, statistics_clip_norm=stats_clip,
        statistics_scale=fixedpoint.choose_scale(n, stats_clip) if stats_clip else None)


def _update(rng: np.random.Generator, magnitude: float, moments: float) -> dict[str, np.ndarray]:
    return {name: rng.standard_normal(shape) * (moments if name in MOMENTS else magnitude)
            for name, shape in SHAPES.items()}


def _signed(q: np.ndarray) -> np.ndarray:
    return q.view(np.int32).astype(np.int64)


@settings(max_examples=120, deadline=None, derandomize=True)
@given(n=st.integers(3, 60), clip=st.floats(1e-3, 1e3), stats_clip=st.floats(1e-2, 1e6),
       max_weight=st.one_of(st.none(), st.integers(1, 100_000)), magnitude=st.floats(1e-4, 1e4),
       moments=st.floats(1e-3, 1e5), seed=st.integers(0, 2**32 - 1))
def test_groups_stay_within_their_bounds_sum_without_wrap_and_decode_within_the_bound(
        n: int, clip: float, stats_clip: float, max_weight: int | None, magnitude: float, moments: float,
        seed: int) -> None:
    rng = np.random.default_rng(seed)
    layout = layout_of(SHAPES, MOMENTS, weighted=max_weight is not None)
    p = _params(n, layout, clip, stats_clip, max_weight)
    split = groups.groups_of(p, layout)
    total = np.zeros(p.vector_length, np.uint32)
    exact = np.zeros(p.vector_length, np.int64)
    want = {name: np.zeros(shape) for name, shape in SHAPES.items()}
    weight_sum = 0.0
    for _ in range(n):
        update = _update(rng, magnitude, moments)
        counts = int(rng.integers(1, 3 * (max_weight or 1) + 1))
        q = encode_input(p, layout, update, counts)
        w = groups.device_weight(counts, max_weight) if max_weight else 1.0
        for group, bound, scale in (("update", clip, p.scale), ("statistics", stats_clip, p.statistics_scale)):
            assert scale is not None
            slots = split.of(group)  # type: ignore[arg-type]
            for s in slots:
                assert np.abs(_signed(q[s.start:s.start + s.size])).max() <= bound * scale + 0.5
            flat = np.concatenate([update[s.name].ravel() for s in slots])
            clipped = fixedpoint.clip_to_norm(flat, bound) * w
            at = 0
            for s in slots:
                want[s.name] += clipped[at:at + s.size].reshape(s.shape)
                at += s.size
        if split.weight is not None:
            assert abs(int(_signed(q[split.weight.start:split.weight.start + 1])[0])) <= clip * p.scale + 0.5
        weight_sum += w
        total += q
        exact += _signed(q)
    assert np.abs(exact).max() <= 2**31 - 1  # the true integer sum fits: the uint32 sum is it, unwrapped
    decoded = groups.decode_groups(p, layout, total, n)
    for name in SHAPES:
        scale = p.statistics_scale if name in MOMENTS else p.scale
        assert scale is not None
        np.testing.assert_allclose(decoded.sums[name], want[name], rtol=0,
                                   atol=fixedpoint.max_abs_error(n, scale) * (1 + 1e-9))
    assert abs(decoded.total_weight - weight_sum) <= decoded.weight_error * (1 + 1e-9) + 1e-12
    assert decoded.weight_error == (0 if max_weight is None else fixedpoint.max_abs_error(n, p.scale) / clip)
    for group, bound, scale in (("update", clip, p.scale), ("statistics", stats_clip, p.statistics_scale)):
        assert scale is not None
        error = groups.mean_error_bound(decoded, bound, scale)
        for s in split.of(group):  # type: ignore[arg-type]
            np.testing.assert_allclose(decoded.sums[s.name] / decoded.total_weight, want[s.name] / weight_sum,
                                       rtol=0, atol=error * (1 + 1e-6) + 1e-12)
    # An honest sum passes each group's mean-norm check.
    norms = _check_mean_norms(decoded, p)
    assert norms["update"] <= clip * (1 + 1e-9) + groups.mean_norm_slack(decoded, split.update, clip, p.scale)


def test_a_weighted_mean_is_the_capped_sample_weighted_mean() -> None:
    n, clip, cap = 4, 10.0, 5
    layout = layout_of({"x": (3,)}, weighted=True)
    p = _params(n, layout, clip, max_weight=cap)
    xs = [np.array([1.0, 2.0, -1.0]) * (i + 1) for i in range(n)]
    counts = [1, 3, 5, 40]
    total = np.zeros(p.vector_length, np.uint32)
    for x, c in zip(xs, counts, strict=True):
        total += encode_input(p, layout, {"x": x}, c)
    decoded = groups.decode_groups(p, layout, total, n)
    weights = [min(c, cap) for c in counts]
    assert decoded.total_weight == pytest.approx(sum(weights) / cap, abs=decoded.weight_error)
    want = sum(w * x for w, x in zip(weights, xs, strict=True)) / sum(weights)
    np.testing.assert_allclose(decoded.sums["x"] / decoded.total_weight, want, rtol=0,
                               atol=groups.mean_error_bound(decoded, clip, p.scale))
    assert WEIGHT_TENSOR not in decoded.sums


def test_device_weight_is_the_capped_count_over_the_cap() -> None:
    assert groups.device_weight(3, 12) == 0.25 and groups.device_weight(12, 12) == 1.0
    assert groups.device_weight(500, 12) == 1.0 and groups.device_weight(1, 100_000) == 1e-5
    with pytest.raises(ValueError, match="sample count"):
        groups.device_weight(0, 12)


def test_layouts_and_inputs_that_do_not_fit_the_round_are_refused() -> None:
    n, plain = 5, layout_of({"x": (3,)})
    weighted, stats = layout_of({"x": (3,)}, weighted=True), layout_of({"x": (3,), "m": (2,)}, {"m"})
    with pytest.raises(ValueError, match="max_weight"):
        groups.groups_of(_params(n, weighted, 1.0), weighted)  # a weight coordinate the round does not weigh
    with pytest.raises(ValueError, match="max_weight"):
        groups.groups_of(_params(n, plain, 1.0, max_weight=4), plain)
    with pytest.raises(ValueError, match="statistics_clip_norm"):
        groups.groups_of(_params(n, stats, 1.0), stats)
    with pytest.raises(ValueError, match="layout holds"):
        groups.groups_of(_params(n, stats, 1.0, 5.0), plain)
    with pytest.raises(ValueError, match="sample count"):
        encode_input(_params(n, weighted, 1.0, max_weight=4), weighted, {"x": np.ones(3)})
    with pytest.raises(ValueError, match="lacks"):
        encode_input(_params(n, stats, 1.0, 5.0), stats, {"x": np.ones(3)})
    with pytest.raises(ValueError, match="weight"):
        groups.encode_groups(_params(n, plain, 1.0), plain, {"x": np.ones(3)}, 0.5)


def test_the_round_parameters_refuse_noise_with_weights_or_statistics_and_a_statistics_scale_that_wraps() -> None:
    n, layout = 5, layout_of({"x": (3,)})
    with pytest.raises(ValidationError, match="unit weights"):
        _params(n, layout, 1.0, max_weight=4, noise=0.1)
    with pytest.raises(ValidationError, match="update group only"):
        _params(n, layout, 1.0, stats_clip=2.0, noise=0.1)
    good = _params(n, layout, 1.0, stats_clip=2.0)
    with pytest.raises(ValidationError, match="come together"):
        SecAggParams.model_validate({**good.model_dump(), "statistics_scale": None})
    with pytest.raises(ValidationError, match="wrap"):
        SecAggParams.model_validate({**good.model_dump(), "statistics_scale": 2 * (good.statistics_scale or 0)})


@pytest.mark.parametrize("forged_total", [-1.0, 0.0, 4.5])
def test_a_weight_coordinate_no_honest_devices_give_is_refused(forged_total: float) -> None:
    """Three honest devices of weight 1/4 and one that encodes its weight coordinate as it likes (any uint32:
    the server cannot see it): a total at or below 0, or above clip_norm x n, cannot come from honest devices."""
    n, clip = 4, 1.0
    layout = layout_of({"x": (3,)}, weighted=True)
    p = _params(n, layout, clip, max_weight=4)
    total = np.zeros(p.vector_length, np.uint32)
    for _ in range(3):
        total += encode_input(p, layout, {"x": np.zeros(3)}, 1)
    hostile = np.zeros(p.vector_length, np.uint32)
    hostile[-1] = np.array([round((forged_total - 0.75) * clip * p.scale)], np.int64).astype(np.uint32)[0]
    with pytest.raises(ValueError, match="weight coordinate sums to"):
        groups.decode_groups(p, layout, total + hostile, n)


def test_each_groups_mean_is_checked_against_its_own_clip() -> None:
    n, layout = 4, layout_of({"x": (3,), "m": (2,)}, {"m"}, weighted=True)
    p = _params(n, layout, 1.0, stats_clip=100.0, max_weight=10)
    honest = [{"x": np.array([1.0, 0, 0]), "m": np.array([100.0, 0])} for _ in range(n)]
    total = sum((encode_input(p, layout, u, 3) for u in honest), np.zeros(p.vector_length, np.uint32))
    decoded = groups.decode_groups(p, layout, total, n)
    norms = _check_mean_norms(decoded, p)
    assert norms["update"] == pytest.approx(1.0, abs=1e-6) and norms["statistics"] == pytest.approx(100.0, abs=1e-4)
    # One device encodes moments of norm 300 at the statistics scale: the mean passes the update clip's check,
    # not its own.
    (m,) = groups.groups_of(p, layout).statistics
    cheat = encode_input(p, layout, honest[0], 3)
    cheat[m.start:m.start + m.size] = fixedpoint.quantize(np.array([300.0 * 0.3, 0.0]), 300.0,
                                                          p.statistics_scale or 0)
    total = sum((encode_input(p, layout, u, 3) for u in honest[1:]), cheat)
    with pytest.raises(AggregationError, match="above statistics_clip_norm"):
        _check_mean_norms(groups.decode_groups(p, layout, total, n), p)
