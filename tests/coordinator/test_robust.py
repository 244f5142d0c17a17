"""The robustness wrapper alone: clipping, sample caps, order statistics (no I/O)."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from coordinator.engine.aggregate import json_safe
from coordinator.strategies import Accumulator, make_strategy
from coordinator.strategies.base import StrategyConfigError
from coordinator.strategies.robust import BoundedAggregation, RoundBounds, coordinate_centre, update_norm
from coordinator.strategies.robust_params import RobustParams
from fedface_common.wire import CLASS_EMBEDDING_TENSOR

BASE = {"w": np.zeros(6, dtype=np.float32)}
finite_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


def _aggregate(updates: list[tuple[np.ndarray, int]], params: dict[str, object], bounds: RoundBounds) -> np.ndarray:
    strategy = make_strategy("fedavg-plain", {"robust": params})
    agg = BoundedAggregation(strategy, strategy.params.robust, bounds)
    acc = Accumulator()
    for delta, n in updates:
        agg.fold(acc, uuid.uuid4(), {"w": delta}, n)
    return agg.finalize(BASE, acc, {}).weights["w"].astype(np.float64)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, 6, elements=finite_f32), st.floats(1e-6, 1e6))
def test_a_clipped_update_never_exceeds_the_bound_and_stays_finite(values: np.ndarray, bound: float) -> None:
    out = _aggregate([(values, 1)], {}, RoundBounds(norm_bound=bound, sample_cap=None))
    assert np.isfinite(out).all()
    assert np.linalg.norm(out) <= bound * (1 + 1e-5) + 1e-30


@settings(max_examples=40, deadline=None)
@given(arrays(np.float32, 6, elements=finite_f32))
def test_the_norm_of_any_finite_float32_update_is_finite(values: np.ndarray) -> None:
    norm = update_norm({"w": values, CLASS_EMBEDDING_TENSOR: np.full(4, 3e38, dtype=np.float32)})
    assert np.isfinite(norm)
    assert norm == pytest.approx(float(np.linalg.norm(values.astype(np.float64))), rel=1e-9, abs=1e-300)


def test_one_scaled_attacker_moves_the_mean_at_most_its_capped_share_of_the_bound() -> None:
    rng = np.random.default_rng(0)
    honest = [(rng.standard_normal(6).astype(np.float32) * 0.01, 20) for _ in range(9)]
    attacker = (np.full(6, 3e38, dtype=np.float32), 100_000)
    bounds = RoundBounds.from_window(RobustParams(), [update_norm({"w": d}) for d, _ in honest],
                                     [n for _, n in honest])
    assert bounds.sample_cap == 80 and bounds.norm_bound is not None
    honest_only = _aggregate(honest, {}, bounds)
    attacked = _aggregate([*honest, attacker], {}, bounds)
    share = bounds.sample_cap / (bounds.sample_cap + 9 * 20)
    assert np.linalg.norm(attacked - honest_only) <= share * (bounds.norm_bound + np.linalg.norm(honest_only)) + 1e-9
    unbounded = _aggregate([*honest, attacker], {"norm_bound": "off", "sample_cap": "off"},
                           RoundBounds(None, None))
    assert not np.isfinite(unbounded).all() or np.abs(unbounded).max() > 1e30  # what the bound prevents


def test_adaptive_bounds_ignore_zero_deltas_and_use_the_median() -> None:
    p = RobustParams(norm_multiplier=2, sample_multiplier=3)
    b = RoundBounds.from_window(p, [0.0, 0.0, 1.0, 2.0, 100.0], [5, 5, 6, 7, 100_000])
    assert b == RoundBounds(norm_bound=4.0, sample_cap=18.0)
    assert RoundBounds.from_window(p, [0.0, 0.0], [1, 1]).norm_bound == 0.0
    assert RoundBounds.fixed(p) is None
    assert RoundBounds.fixed(RobustParams(norm_bound=2.5, sample_cap="off")) == RoundBounds(2.5, None)


@pytest.mark.parametrize("aggregation", ["median", "trimmed-mean"])
def test_order_statistics_ignore_one_attacker_in_ten(aggregation: str) -> None:
    rng = np.random.default_rng(1)
    honest = [(np.float32(0.5) + rng.standard_normal(6).astype(np.float32) * 0.01, 1) for _ in range(9)]
    params = {"aggregation": aggregation, "trim_fraction": 0.1, "norm_bound": "off", "sample_cap": "off"}
    out = _aggregate([*honest, (np.full(6, 1e30, dtype=np.float32), 1)], params, RoundBounds(None, None))
    assert np.abs(out - 0.5).max() < 0.05


def test_coordinate_centre_matches_numpy() -> None:
    values = [np.array([float(i), -float(i)]) for i in range(10)]
    np.testing.assert_allclose(coordinate_centre(values, RobustParams(aggregation="median")), [4.5, -4.5])
    trimmed = coordinate_centre(values, RobustParams(aggregation="trimmed-mean", trim_fraction=0.2))
    np.testing.assert_allclose(trimmed, [4.5, -4.5])


def test_class_embeddings_are_folded_as_unit_rows() -> None:
    strategy = make_strategy("fedface")
    agg = BoundedAggregation(strategy, strategy.params.robust, RoundBounds(1.0, None))
    acc = Accumulator()
    agg.fold(acc, uuid.uuid4(), {"w": np.ones(6, np.float32), CLASS_EMBEDDING_TENSOR: np.full(4, 1e-3, np.float32)}, 1)
    (row,) = acc.rows.values()
    assert np.linalg.norm(row) == pytest.approx(1.0, rel=1e-6)
    assert acc.clipped == 1


@pytest.mark.parametrize("bad", [{"norm_bound": 0}, {"norm_bound": -1}, {"norm_bound": "auto"}, {"sample_cap": 0},
                                 {"aggregation": "mode"}, {"trim_fraction": 0.5}, {"window": 0}, {"extra": 1}])
def test_bad_robust_parameters_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(StrategyConfigError):
        make_strategy("fedface", {"robust": bad})


def test_devices_are_not_told_the_bounds() -> None:
    assert "robust" not in make_strategy("fedavg-plain").client_params()


def test_metrics_with_non_finite_values_become_storable_json() -> None:
    assert json_safe({"a": float("nan"), "b": [np.float32(np.inf), 1.5], "c": np.int64(3), "d": "x"}) == {
        "a": None, "b": [None, 1.5], "c": 3, "d": "x"}
