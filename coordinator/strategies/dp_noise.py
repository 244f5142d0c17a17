"""The Gaussian noise of a DP round: who adds which share of it, and where the randomness comes from.

The guarantee needs the round's sum of clipped updates to carry noise N(0, sigma^2) once, whatever the
number of partial sums it was merged from. In central mode the coordinator adds all of sigma at finalize.
A distributed mode splits it: each of at least n devices adds N(0, sigma^2 / n) to its own update, secure
aggregation reveals only the sum, and the server adds nothing (or tops up what dropped devices left out).
`noise_shares` is where that mode goes; the fold and the accountant do not change."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from coordinator.strategies.dp_params import DpMode


@dataclass(frozen=True)
class NoiseShares:
    """Standard deviations of the noise the server adds to the sum and each device adds to its update."""

    server_stddev: float
    device_stddev: float


def noise_shares(mode: DpMode, sum_stddev: float) -> NoiseShares:
    if mode == "central":
        return NoiseShares(server_stddev=sum_stddev, device_stddev=0.0)
    raise ValueError(f"unknown DP mode {mode!r}")


def fresh_generator() -> np.random.Generator:
    """A generator seeded with 256 bits from the operating system's CSPRNG, new for every aggregation.

    The noise is only as private as it is unpredictable: a seed someone can guess or replay (a fixed one, the
    time, a process's default state shared by forked replicas) lets them subtract the noise. PCG64 itself is
    not a cryptographic generator, but its state here comes from os.urandom, is never stored or logged, and
    nothing derived from it is released except the noised sum, so an observer sees outputs masked by the
    signal rather than raw draws to reconstruct the state from. Drawing millions of floats from os.urandom
    directly would give the same protection at many times the cost."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(int.from_bytes(os.urandom(32), "big"))))


def add_gaussian(sums: Mapping[str, np.ndarray], stddev: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The sums plus independent N(0, stddev^2) per coordinate, in float64.

    Names are visited in sorted order so that a seeded generator gives the same noise whatever order the
    updates (and hence the sums' keys) arrived in."""
    out: dict[str, np.ndarray] = {}
    for name in sorted(sums):
        value = np.asarray(sums[name], dtype=np.float64)
        out[name] = value + rng.normal(0.0, stddev, size=value.shape) if stddev > 0 else value.copy()
    return out
