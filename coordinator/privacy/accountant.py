"""Epsilon of a sequence of DP-FedAvg rounds, from Google's dp-accounting (RDP accountant).

Each round is a Poisson-subsampled Gaussian mechanism: every enrolled device takes part independently with
probability q, and the round's sum of clipped updates carries Gaussian noise of multiplier z (noise standard
deviation over the clip). Rounds compose; the accountant turns the composition into epsilon at a delta.

The coordinator does not sample devices that way: it hands tasks to the first devices that check in, up to
target x over_selection. The accounting takes q = (that cap) / (enrolled devices) and is exact only if which
devices check in is itself like uniform sampling; a device that always checks in first takes part more often
than q says. Amplification by sampling assumes nobody learns who took part, too: the operator sees the
round's participants, so epsilon here is against those who see only the models."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import dp_accounting
from dp_accounting import rdp


@dataclass(frozen=True)
class DpRound:
    sampling_probability: float
    noise_multiplier: float


@contextmanager
def _quiet() -> Iterator[None]:
    """dp-accounting logs through absl when a fractional RDP order does not converge; it drops that order and
    the answer stays a valid bound, so the warning is noise to an operator."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _event(q: float, z: float) -> dp_accounting.DpEvent:
    return dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))


def sampling_probability(population: int, per_round: int) -> float:
    """q for `per_round` devices out of `population` (1 when every device takes part)."""
    if population < 1 or per_round < 1:
        raise ValueError("population and per_round must be positive")
    return min(1.0, per_round / population)


def epsilon(rounds: Sequence[DpRound], delta: float) -> float:
    """Epsilon at delta after all the rounds (0 for none)."""
    if not rounds:
        return 0.0
    accountant = rdp.RdpAccountant()
    # Composition adds RDP curves, so equal rounds compose at once: the order of rounds does not matter.
    with _quiet():
        for (q, z), count in Counter((r.sampling_probability, r.noise_multiplier) for r in rounds).items():
            accountant.compose(_event(q, z), count)
        return float(accountant.get_epsilon(delta))


def epsilon_for(population: int, per_round: int, rounds: int, noise_multiplier: float, delta: float) -> float:
    """Epsilon of `rounds` equal rounds of `per_round` devices out of `population`."""
    q = sampling_probability(population, per_round)
    return epsilon([DpRound(q, noise_multiplier)] * rounds, delta)


def noise_for_epsilon(population: int, per_round: int, rounds: int, target_epsilon: float, delta: float) -> float:
    """The noise multiplier whose `rounds` rounds reach target_epsilon at delta: at most 2e-4 above the least
    such z, never below it."""
    q = sampling_probability(population, per_round)
    with _quiet():
        z = dp_accounting.calibrate_dp_mechanism(
            rdp.RdpAccountant, lambda z: dp_accounting.SelfComposedDpEvent(_event(q, z), rounds),
            target_epsilon, delta, dp_accounting.LowerEndpointAndGuess(0.0, 1.0), tol=1e-4)
    # Brent's root may sit just below the exact one; the next step up keeps the promise.
    return float(z) + 1e-4
