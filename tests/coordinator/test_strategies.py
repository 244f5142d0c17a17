"""Aggregation math: property tests (hypothesis) and hand-computed values."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.strategies import Accumulator, make_strategy
from coordinator.strategies.base import StrategyConfigError
from coordinator.strategies.collapse import mean_offdiagonal_cosine
from coordinator.strategies.spreadout import spreadout_grad, spreadout_loss, spreadout_steps
from fedface_common.tensors import TensorInfo
from fedface_common.wire import CLASS_EMBEDDING_TENSOR

SHAPES = {"a": (3, 2), "b": (4,)}


@st.composite
def updates(draw: st.DrawFn) -> list[tuple[dict[str, np.ndarray], int]]:
    n = draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        tensors = {k: (rng.standard_normal(s) * draw(st.floats(0.01, 100))).astype(np.float32)
                   for k, s in SHAPES.items()}
        out.append((tensors, draw(st.integers(1, 10_000))))
    return out


def _aggregate(items: list[tuple[dict[str, np.ndarray], int]], order: list[int]) -> dict[str, np.ndarray]:
    strategy = make_strategy("fedavg-plain")
    base = {k: np.ones(s, np.float32) for k, s in SHAPES.items()}
    acc = Accumulator()
    for i in order:
        strategy.fold(acc, uuid.UUID(int=i), items[i][0], items[i][1])
    return strategy.finalize(base, acc, {}).weights


@settings(max_examples=60, deadline=None)
@given(items=updates(), data=st.data())
def test_fedavg_is_the_weighted_mean_and_does_not_depend_on_order(items: list, data: st.DataObject) -> None:
    order = data.draw(st.permutations(list(range(len(items)))))
    a = _aggregate(items, list(range(len(items))))
    b = _aggregate(items, list(order))
    total = sum(n for _, n in items)
    for name in SHAPES:
        expected = 1.0 + sum(t[name].astype(np.float64) * n for t, n in items) / total
        np.testing.assert_allclose(a[name], expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(a[name], b[name], rtol=1e-6, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(items=updates(), server_lr=st.floats(0.1, 20))
def test_server_lr_scales_the_mean_delta(items: list, server_lr: float) -> None:
    """base + server_lr x weighted mean delta (FedOpt's server step; 1 is FedAvg)."""
    strategy = make_strategy("fedavg-plain", {"server_lr": server_lr})
    base = {k: np.ones(s, np.float32) for k, s in SHAPES.items()}
    acc = Accumulator()
    for i, (tensors, n) in enumerate(items):
        strategy.fold(acc, uuid.UUID(int=i), tensors, n)
    out = strategy.finalize(base, acc, {}).weights
    total = sum(n for _, n in items)
    for name in SHAPES:
        expected = 1.0 + server_lr * sum(t[name].astype(np.float64) * n for t, n in items) / total
        np.testing.assert_allclose(out[name], expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("bad", [0, -1, 101, "fast"])
def test_server_lr_out_of_range_is_refused(bad: object) -> None:
    with pytest.raises(StrategyConfigError, match="server_lr"):
        make_strategy("fedface", {"server_lr": bad})


@settings(max_examples=30, deadline=None)
@given(items=updates(), split=st.integers(0, 8))
def test_partial_sums_merge_to_the_same_result(items: list, split: int) -> None:
    """What replicas fold separately and merge equals one fold of everything."""
    strategy = make_strategy("fedavg-plain")
    left, right = Accumulator(), Accumulator()
    for i, (t, n) in enumerate(items):
        strategy.fold(left if i < split else right, uuid.UUID(int=i), t, n)
    left.merge(right)
    whole = Accumulator()
    for i, (t, n) in enumerate(items):
        strategy.fold(whole, uuid.UUID(int=i), t, n)
    assert left.count == whole.count and left.total_weight == whole.total_weight
    for name in whole.sums:
        np.testing.assert_allclose(left.sums[name], whole.sums[name], rtol=1e-9)


def test_fold_refuses_zero_weight_and_a_device_twice() -> None:
    strategy = make_strategy("fedavg")
    acc = Accumulator()
    with pytest.raises(ValueError):
        strategy.fold(acc, uuid.UUID(int=1), {"a": np.zeros(1, np.float32)}, 0)
    upd = {CLASS_EMBEDDING_TENSOR: np.ones(2, np.float32)}
    strategy.fold(acc, uuid.UUID(int=1), upd, 1)
    with pytest.raises(ValueError):
        strategy.fold(acc, uuid.UUID(int=1), upd, 1)


def test_spreadout_loss_by_hand() -> None:
    # Unit rows at 0, 60 and 90 degrees: cosines 0.5 (0-60), 0 (0-90), cos 30 = 0.866 (60-90).
    w = np.array([[1, 0], [0.5, np.sqrt(3) / 2], [0, 1]], dtype=np.float64)
    tau = 0.3
    pairs = [max(0.0, 0.5 - tau) ** 2, 0.0, max(0.0, np.sqrt(3) / 2 - tau) ** 2]
    expected = 2 * sum(pairs) / (3 * 2)  # ordered pairs i != j
    assert spreadout_loss(w, tau) == pytest.approx(expected)
    assert spreadout_loss(w * 3.0, tau) == pytest.approx(expected)  # rows are normalised first


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 7), tau=st.floats(-0.5, 0.8),
       knn=st.one_of(st.none(), st.integers(1, 3)))
def test_spreadout_gradient_matches_finite_differences(seed: int, n: int, tau: float, knn: int | None) -> None:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, 3))
    grad = spreadout_grad(w, tau, knn)
    eps = 1e-6
    numeric = np.zeros_like(w)
    for idx in np.ndindex(w.shape):
        d = np.zeros_like(w)
        d[idx] = eps
        numeric[idx] = (spreadout_loss(w + d, tau, knn) - spreadout_loss(w - d, tau, knn)) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, atol=1e-5, rtol=1e-4)


def test_spreadout_steps_push_rows_apart() -> None:
    rng = np.random.default_rng(0)
    w = np.ones((20, 8)) + 0.05 * rng.standard_normal((20, 8))  # nearly collapsed
    before = spreadout_loss(w, 0.3)
    after_w = spreadout_steps(w, tau=0.3, steps=50, lr=50.0, momentum=0.9)
    assert spreadout_loss(after_w, 0.3) < 0.5 * before
    assert mean_offdiagonal_cosine(after_w) < mean_offdiagonal_cosine(w)  # type: ignore[operator]


def test_collapse_monitor_by_hand() -> None:
    assert mean_offdiagonal_cosine(np.array([[1.0, 0], [2.0, 0], [5.0, 0]])) == pytest.approx(1.0)
    assert mean_offdiagonal_cosine(np.array([[1.0, 0], [0, 1.0]])) == pytest.approx(0.0)
    assert mean_offdiagonal_cosine(np.array([[1.0, 0], [-1.0, 0]])) == pytest.approx(-1.0)
    assert mean_offdiagonal_cosine(np.array([[1.0, 0]])) is None


def test_fedface_replaces_participant_rows_then_spreads_all_of_w() -> None:
    strategy = make_strategy("fedface", {"spreadout_steps": 20, "spreadout_lr": 100.0, "tau": 0.0})
    base = {"a": np.zeros(2, np.float32)}
    old = {uuid.UUID(int=i): np.array([1.0, 0.1 * i, 0.0], np.float32) for i in range(3)}
    acc = Accumulator()
    strategy.fold(acc, uuid.UUID(int=1), {"a": np.ones(2, np.float32),
                                          CLASS_EMBEDDING_TENSOR: np.array([0.0, 0.0, 1.0], np.float32)}, 2)
    result = strategy.finalize(base, acc, old)
    assert set(result.class_embeddings) == set(old)
    rows = np.stack([result.class_embeddings[k] for k in sorted(old)])
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, rtol=1e-5)
    m = result.metrics
    assert m["spreadout_after"] < m["spreadout_before"]
    assert m["w_mean_offdiag_cos_after_spreadout"] < m["w_mean_offdiag_cos"]
    np.testing.assert_allclose(result.weights["a"], [1.0, 1.0])
    # FedAvg keeps W as sent: no spreadout.
    fedavg = make_strategy("fedavg").finalize(base, acc, old)
    np.testing.assert_allclose(fedavg.class_embeddings[uuid.UUID(int=1)], [0.0, 0.0, 1.0])
    assert set(fedavg.class_embeddings) == {uuid.UUID(int=1)}


def test_fedface_sends_the_devices_their_loss_settings_and_nothing_server_side() -> None:
    params = make_strategy("fedface", {"margin": 0.7, "wc_lr_scale": 0, "frozen": ["bn_embedding.bias"],
                                       "embedding_stats": True, "server_lr": 2}).client_params()
    assert params == {"margin": 0.7, "wc_lr_scale": 0.0, "frozen": ["bn_embedding.bias"], "embedding_stats": True,
                      "embedding_lda_dims": None, "embedding_lda_mirror": False, "update_encoding": "float32",
                      "max_grad_norm": 5.0}


@pytest.mark.parametrize(("bad", "field"), [
    ({"wc_lr_scale": -0.5}, "wc_lr_scale"), ({"wc_lr_scale": 101}, "wc_lr_scale"),
    ({"frozen": "bn_embedding.bias"}, "frozen"), ({"frozen": [""]}, "frozen"),
    ({"frozen": ["x" * 201]}, "frozen"), ({"frozen": ["a"] * 65}, "frozen"),
    ({"embedding_lda_dims": 0}, "lda_dims"), ({"embedding_lda_dims": 1025}, "lda_dims"),
    ({"embedding_lda_dims": 8, "embedding_lda_shrinkage": -1}, "lda_shrinkage"),
    ({"embedding_lda_dims": 8, "embedding_lda_mirror": "sometimes"}, "lda_mirror"),
])
def test_bad_device_loss_settings_are_refused(bad: dict, field: str) -> None:
    for algorithm in ("fedface", "fedavg"):
        with pytest.raises(StrategyConfigError, match=field):
            make_strategy(algorithm, bad)


@pytest.mark.parametrize("algorithm", ["fedface", "fedavg", "fedface-private", "fedavg-plain"])
def test_every_algorithm_sends_its_update_encoding_and_refuses_unknown_ones(algorithm: str) -> None:
    assert make_strategy(algorithm).client_params()["update_encoding"] == "float32"
    int8 = make_strategy(algorithm, {"update_encoding": "int8"})
    assert int8.client_params()["update_encoding"] == "int8"
    spec = int8.wire_spec({"a": TensorInfo("F32", (3, 2)), "n": TensorInfo("I64", ())}, 4)
    assert spec["a"] == TensorInfo("I8", (3, 2)) and spec["fedface.scale.a"] == TensorInfo("F32", (1,))
    assert "n" not in spec and spec.get(CLASS_EMBEDDING_TENSOR, TensorInfo("F32", (4,))).dtype == "F32"
    with pytest.raises(StrategyConfigError, match="update_encoding"):
        make_strategy(algorithm, {"update_encoding": "int4"})


@pytest.mark.parametrize("algorithm", ["fedface", "fedavg", "fedface-private"])
def test_every_algorithm_whose_devices_train_a_backbone_sends_its_frozen_prefixes(algorithm: str) -> None:
    frozen = ["stem.", "blocks.0."]
    assert make_strategy(algorithm, {"frozen": frozen}).client_params()["frozen"] == frozen
    assert make_strategy(algorithm).client_params()["frozen"] == []
    for bad in ([""], "stem.", ["x" * 201]):
        with pytest.raises(StrategyConfigError, match="frozen"):
            make_strategy(algorithm, {"frozen": bad})
