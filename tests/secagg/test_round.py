"""Whole rounds in memory: for every dropout pattern, the round either yields exactly the sum of the
surviving inputs or fails with the typed error the pattern calls for; and the decoded float sum is
within the stated bound of the float sum."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from coordinator.secagg.errors import NotEnoughShares, NotEnoughSurvivors, SurvivorsDisconnected
from coordinator.secagg.simulate import Dropouts, run_round
from fedface_common.secagg import fixedpoint, graph
from fedface_common.secagg.messages import SecAggParams
from tests.secagg.rounds import encoded, float_inputs, make_params

STAGES = ("advertise", "share_keys", "masked_input", "unmask")


def _core(members: set[str], g: dict[str, tuple[str, ...]], t: int) -> set[str]:
    alive = set(members)
    while True:
        weak = {u for u in alive if len(set(g[u]) & alive) < t}
        if not weak:
            return alive
        alive -= weak


def _expected_outcome(params: SecAggParams, drops: Dropouts) -> str | set[str]:
    """What the protocol must do with this pattern, worked out independently of the server's code: the
    set of inputs in the sum, or the name of the error."""
    g = graph.neighbours(params.devices, params.neighbours, params.graph_seed)
    t, need = params.threshold, params.min_survivors
    u1 = _core(set(params.devices) - drops.advertise, g, t)
    if len(u1) < need:
        return "NotEnoughSurvivors"
    u2 = _core(u1 - drops.share_keys, g, t)
    if len(u2) < need:
        return "NotEnoughSurvivors"
    u3 = u2 - drops.masked_input
    if len(u3) < need:
        return "NotEnoughSurvivors"
    reached, frontier = set(), [min(u3)]
    while frontier:
        u = frontier.pop()
        if u not in reached:
            reached.add(u)
            frontier += [v for v in g[u] if v in u3]
    if reached != u3:
        return "SurvivorsDisconnected"
    responders = u3 - drops.unmask
    if any(len(set(g[owner]) & responders) < t for owner in u2):  # u3's seeds and (u2 - u3)'s keys
        return "NotEnoughShares"
    return u3


def _check_round(params: SecAggParams, drops: Dropouts, seed: int = 0) -> str | set[str]:
    floats = float_inputs(params, seed)
    inputs = encoded(params, floats)
    expected = _expected_outcome(params, drops)
    try:
        result = run_round(params, inputs, drops)
    except (NotEnoughSurvivors, SurvivorsDisconnected, NotEnoughShares) as exc:
        assert type(exc).__name__ == expected
        return expected
    assert result.refused == {}  # the server's pruning leaves no device a reason to refuse
    assert set(result.state.masked or []) == expected
    exact = np.zeros(params.vector_length, np.uint64)
    for d in expected:
        exact += inputs[d]
    assert np.array_equal(result.total, (exact % 2**32).astype(np.uint32))
    clipped = np.array([fixedpoint.clip_to_norm(floats[d], params.clip_norm) for d in sorted(expected)])
    float_sum = np.array([math.fsum(column) for column in clipped.T])
    bound = fixedpoint.max_abs_error(len(expected), params.scale)
    assert np.abs(fixedpoint.decode(result.total, params.scale) - float_sum).max() <= bound * (1 + 1e-12)
    return expected


@st.composite
def rounds(draw: st.DrawFn) -> tuple[SecAggParams, Dropouts]:
    n = draw(st.integers(3, 14), label="n")
    k = draw(st.sampled_from([k for k in range(2, n - 1, 2)] + [n - 1]), label="k")
    t = draw(st.integers(k // 2 + 1, k), label="t")
    params = make_params(n, k, t, length=24, min_survivors=draw(st.integers(2, max(2, n // 3))),
                         seed=draw(st.integers(0, 10**6)))
    # Mostly present, so that tolerable patterns are common; hypothesis still finds the edges.
    fate = draw(st.lists(st.sampled_from((None,) * 12 + STAGES), min_size=n, max_size=n))
    groups = {stage: frozenset(d for d, f in zip(params.devices, fate, strict=True) if f == stage) for stage in STAGES}
    return params, Dropouts(**groups)


@settings(max_examples=120, deadline=None, derandomize=True)
@given(rounds())
def test_any_dropout_pattern_yields_the_exact_sum_or_the_error_it_calls_for(
    case: tuple[SecAggParams, Dropouts],
) -> None:
    params, drops = case
    outcome = _check_round(params, drops)
    event("exact sum" if isinstance(outcome, set) else outcome)


@pytest.mark.parametrize("stage", STAGES)
def test_drops_at_one_stage_still_sum_exactly(stage: str) -> None:
    params = make_params(10, 9, 5, length=40)
    dropped = frozenset(params.devices[2:5])
    outcome = _check_round(params, Dropouts(**{stage: dropped}))
    survivors = set(params.devices) - (dropped if stage != "unmask" else set())
    assert outcome == survivors  # devices that drop at unmasking are in the sum all the same


def test_fifty_devices_with_ten_percent_dropping_at_each_stage() -> None:
    """50 devices, 5 silent at each of the four stages (40% over the round): 35 inputs in the sum. At
    n = 50 no sparse graph promises 2^-20 correctness at that rate, so this is the complete graph
    (k = 49, t = 25); the sparse graphs of larger rounds are exercised below."""
    params = make_params(50, 49, 25, length=500)
    order = np.random.default_rng(7).permutation(params.devices).tolist()
    drops = Dropouts(*(frozenset(order[5 * i: 5 * i + 5]) for i in range(4)))
    outcome = _check_round(params, drops, seed=3)
    assert isinstance(outcome, set) and len(outcome) == 35


def test_a_sparse_round_with_parameters_from_the_rule() -> None:
    """150 devices at a 10% dropout budget: (k, t) from choose_parameters, 2.5% dropping at each stage."""
    k, t = graph.choose_parameters(150, 0.1)
    assert k < 149
    params = make_params(150, k, t, length=200, seed=11)
    order = np.random.default_rng(11).permutation(params.devices).tolist()
    drops = Dropouts(*(frozenset(order[4 * i: 4 * i + 4]) for i in range(4)))
    outcome = _check_round(params, drops, seed=5)
    assert isinstance(outcome, set) and len(outcome) == 150 - 12


def test_all_devices_present() -> None:
    params = make_params(7, 4, 3, length=10)
    assert _check_round(params, Dropouts()) == set(params.devices)


def test_a_split_survivor_graph_is_refused_before_any_share_is_revealed() -> None:
    """With k = 4, two gaps of two neighbouring ring positions missing at the masked input cut the
    survivors in two: each half's sum would be computable on its own, so the round stops there."""
    params = make_params(12, 4, 3, length=10)
    ring = graph.ring_order(params.devices, params.graph_seed)
    cut = frozenset({ring[0], ring[1], ring[6], ring[7]})
    assert _check_round(params, Dropouts(masked_input=cut)) == "SurvivorsDisconnected"
    assert isinstance(_check_round(params, Dropouts(masked_input=frozenset({ring[0], ring[6]}))), set)


def test_too_many_dropouts_at_unmasking_are_reported_not_guessed() -> None:
    params = make_params(8, 7, 4, length=10)
    drops = Dropouts(unmask=frozenset(params.devices[:5]))  # 3 responders < t
    assert _check_round(params, drops) == "NotEnoughShares"
