"""The neighbour graph is the same for every party, symmetric and k-regular; (k, t) meet the stated
bounds, and impossible requests are refused."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedface_common.secagg import graph
from fedface_common.secagg.graph import ParameterError


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.integers(3, 80), st.data())
def test_graph_is_symmetric_k_regular_and_a_function_of_the_seed(n: int, data: st.DataObject) -> None:
    devices = [f"d{i}" for i in range(n)]
    k = data.draw(st.sampled_from([k for k in range(2, n - 1, 2)] + [n - 1]), label="k")
    seed = data.draw(st.binary(min_size=32, max_size=32), label="seed")
    g = graph.neighbours(devices, k, seed)
    assert g == graph.neighbours(list(reversed(devices)), k, seed)  # the listing order does not matter
    for d, ns in g.items():
        assert len(ns) == k and len(set(ns)) == k and d not in ns
        assert all(d in g[v] for v in ns)
        assert graph.neighbours_of(devices, k, seed, d) == ns


def test_different_seeds_relabel_the_ring() -> None:
    devices = [f"d{i}" for i in range(40)]
    assert graph.neighbours(devices, 6, bytes(32)) != graph.neighbours(devices, 6, b"\x01" * 32)


def test_invalid_degrees_are_refused() -> None:
    devices = [f"d{i}" for i in range(10)]
    assert graph.valid_degree(10, 8) and graph.valid_degree(10, 9)
    for k in (0, 1, 7, 10, 11):  # odd below n - 1, or beyond it
        assert not graph.valid_degree(10, k)
        with pytest.raises(ValueError):
            graph.neighbours(devices, k, bytes(32))
    with pytest.raises(ValueError):
        graph.neighbours(["a", "a", "b"], 2, bytes(32))


@settings(max_examples=80, deadline=None, derandomize=True)
@given(st.integers(2, 3000), st.floats(0.0, 0.35), st.floats(0.0, 0.1))
def test_chosen_parameters_meet_every_stated_bound(n: int, dropout: float, corrupt: float) -> None:
    sigma, eta = 40.0, 20.0
    try:
        k, t = graph.choose_parameters(n, dropout, corrupt=corrupt, security_bits=sigma, correctness_bits=eta)
    except ParameterError:
        return
    assert graph.valid_degree(n, k) and k / 2 < t <= k
    log_n = math.log2(n)
    assert log_n + graph.log2_binomial_below(k, 1 - dropout, t) <= -eta
    if k < n - 1 and dropout + corrupt > 0:
        assert log_n + (k / 2) * math.log2(dropout + corrupt) <= -sigma
    if corrupt > 0:
        assert log_n + graph.log2_binomial_at_least(k, corrupt, t) <= -sigma


def test_parameters_at_reference_points() -> None:
    """Logarithmic growth in n at a fixed dropout rate, and no sparse graph when n is small."""
    assert graph.choose_parameters(1000, 0.1) == (38, 20)
    assert graph.choose_parameters(10_000, 0.1) == (42, 22)
    assert graph.choose_parameters(100, 0.05) == (22, 12)
    k, _ = graph.choose_parameters(30, 0.0)
    assert k == 2  # without dropouts a ring suffices
    with pytest.raises(ParameterError):
        graph.choose_parameters(20, 0.3)  # even the complete graph cannot promise 2^-20 here
    with pytest.raises(ParameterError):
        graph.choose_parameters(1000, 0.6)
    with pytest.raises(ParameterError):
        graph.choose_parameters(1, 0.0)


def test_binomial_tails_agree_with_direct_sums() -> None:
    k, p = 12, 0.3
    pmf = [math.comb(k, i) * p**i * (1 - p) ** (k - i) for i in range(k + 1)]
    for t in range(k + 2):
        assert 2 ** graph.log2_binomial_below(k, p, t) == pytest.approx(sum(pmf[:t]), rel=1e-9, abs=1e-300)
        assert 2 ** graph.log2_binomial_at_least(k, p, t) == pytest.approx(sum(pmf[t:]), rel=1e-9, abs=1e-300)
