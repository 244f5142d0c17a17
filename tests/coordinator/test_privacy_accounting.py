"""The accountant against dp-accounting used directly."""

from __future__ import annotations

import itertools

import dp_accounting
import pytest
from dp_accounting import rdp

from coordinator.privacy import accountant
from coordinator.privacy.accountant import DpRound

BENCH_Q = 50 / 1012


def _direct(rounds: list[tuple[float, float]], delta: float) -> float:
    acc = rdp.RdpAccountant()
    for q, z in rounds:
        acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)))
    return float(acc.get_epsilon(delta))


@pytest.mark.parametrize(("q", "z", "rounds", "delta"), [(BENCH_Q, 1.0, 5, 1e-5), (BENCH_Q, 2.0, 5, 1e-5),
                                                         (0.01, 1.1, 100, 1e-6), (1.0, 4.0, 3, 1e-5)])
def test_accountant_matches_dp_accounting(q: float, z: float, rounds: int, delta: float) -> None:
    assert accountant.epsilon([DpRound(q, z)] * rounds, delta) == pytest.approx(_direct([(q, z)] * rounds, delta),
                                                                                 rel=1e-12)


def test_a_ledger_of_unlike_rounds_composes_each_one() -> None:
    ledger = [(0.05, 1.0), (0.1, 1.5), (0.05, 1.0), (0.02, 0.8)]
    got = accountant.epsilon([DpRound(q, z) for q, z in ledger], 1e-5)
    assert got == pytest.approx(_direct(ledger, 1e-5), rel=1e-12)


def test_known_value_for_the_bench_regime() -> None:
    # 1,012 devices, 50 a round, 5 rounds, z = 1, delta 1e-5 (dp-accounting 0.6's RDP accountant).
    assert accountant.epsilon_for(1012, 50, 5, 1.0, 1e-5) == pytest.approx(1.9197, abs=1e-3)


def test_epsilon_grows_with_every_round() -> None:
    eps = [accountant.epsilon_for(1012, 50, t, 1.0, 1e-5) for t in range(1, 11)]
    assert accountant.epsilon([], 1e-5) == 0.0
    assert all(a < b for a, b in itertools.pairwise(eps))


@pytest.mark.parametrize("target", [1.0, 4.0, 8.0])
def test_noise_for_a_target_epsilon_is_just_enough(target: float) -> None:
    z = accountant.noise_for_epsilon(1012, 50, 5, target, 1e-5)
    assert accountant.epsilon_for(1012, 50, 5, z, 1e-5) <= target
    assert accountant.epsilon_for(1012, 50, 5, z - 5e-4, 1e-5) > target
