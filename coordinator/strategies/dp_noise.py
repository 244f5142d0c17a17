"""The Gaussian noise of a DP round: who adds which share of it, and where the randomness comes from.

The guarantee needs the round's sum of clipped updates to carry noise N(0, sigma^2) once, whatever the
number of partial sums it was merged from. Two modes share it out (`noise_shares`):

* central: the coordinator adds all of sigma at finalize, and must be trusted with the plain sum;
* distributed (only under secure aggregation): each device adds N(0, sigma^2 / m) to its clipped update
  before it masks it, m the fewest masked inputs the server will unmask (SecAggParams.min_survivors), and
  the server adds nothing. No party sees a less noised sum: the server sees only the sum of at least m
  noised inputs, each device only its own. With s >= m survivors the sum's noise has variance s / m x sigma^2,
  never less than the accounted sigma^2, so the accountant composes the round's z in both modes.

The shared parts (the generator, a device's share, the clamp's tail) are in fedface_common/dp_noise.py,
which the agent imports too; the fold and the accountant do not depend on the mode."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from coordinator.strategies.dp_params import DpMode
from fedface_common.dp_noise import device_stddev, fresh_generator

__all__ = ["NoiseShares", "add_gaussian", "fresh_generator", "noise_shares"]


@dataclass(frozen=True)
class NoiseShares:
    """Standard deviations of the noise the server adds to the sum and each device adds to its update."""

    server_stddev: float
    device_stddev: float


def noise_shares(mode: DpMode, sum_stddev: float, min_inputs: int | None = None) -> NoiseShares:
    """`min_inputs`: in distributed mode, the fewest inputs a released sum can hold (m)."""
    if mode == "central":
        return NoiseShares(server_stddev=sum_stddev, device_stddev=0.0)
    if mode == "distributed":
        if min_inputs is None:
            raise ValueError("distributed DP needs the fewest inputs a sum can hold")
        return NoiseShares(server_stddev=0.0, device_stddev=device_stddev(sum_stddev, min_inputs))
    raise ValueError(f"unknown DP mode {mode!r}")


def add_gaussian(sums: Mapping[str, np.ndarray], stddev: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The sums plus independent N(0, stddev^2) per coordinate, in float64.

    Names are visited in sorted order so that a seeded generator gives the same noise whatever order the
    updates (and hence the sums' keys) arrived in."""
    out: dict[str, np.ndarray] = {}
    for name in sorted(sums):
        value = np.asarray(sums[name], dtype=np.float64)
        out[name] = value + rng.normal(0.0, stddev, size=value.shape) if stddev > 0 else value.copy()
    return out
