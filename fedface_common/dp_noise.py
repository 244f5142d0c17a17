"""Gaussian noise for differential privacy, as the coordinator and the devices both draw it.

The coordinator's side (who adds which share, the accounting) is coordinator/strategies/dp_noise.py; the
devices' side of the distributed mode is `fedface_common.secagg.device.encode_input`. What both need
lives here, so that the agent never imports the coordinator:

* `fresh_generator`: the randomness of every draw.
* `device_stddev`: a device's share of the round's noise. Each device adds N(0, sigma_dev^2) with
  sigma_dev = sigma_sum / sqrt(m), m the fewest inputs the server will ever unmask (SecAggParams.min_survivors:
  the round fails before unmasking a sum of fewer). A sum of s >= m inputs carries N(0, s sigma_dev^2), of
  variance s / m x sigma_sum^2 >= sigma_sum^2: accounting with the round's z stays conservative under any
  dropout, and a device that drops after sending its masked input leaves its noise in the sum with its input.
* `TAIL_SIGMAS` and `tail_probability`: the clamp that keeps a noised coordinate encodable. A noised coordinate
  is unbounded; each device clamps it to +-(C + tau sigma_dev), which changes it only when its noise exceeds
  tau sigma_dev, with probability erfc(tau / sqrt 2) per coordinate: 1.52e-23 at tau = 10, so 1.5e-16 for a
  device of d = 1e7 coordinates (6.8e-17 for the 4.46 M trained parameters of the bench's model). That event
  is where the released sum can differ from the Gaussian mechanism, so in principle it adds n x d x
  erfc(tau / sqrt 2) to delta for n devices: some 1e-14 at 100 devices of 1e7 coordinates, far below any
  delta worth stating.
* `norm_bound`: how long a Gaussian noise vector can be (the coordinator's check of the unmasked mean)."""

from __future__ import annotations

import math
import os

import numpy as np

TAIL_SIGMAS = 10.0  # tau: a device's noised coordinate is clamped at C + tau x its noise stddev
NORM_TAIL = 10.0  # t: a Gaussian vector's norm exceeds sigma (sqrt(d) + t) with probability <= exp(-t^2 / 2)


def fresh_generator() -> np.random.Generator:
    """A generator seeded with 256 bits from the operating system's CSPRNG, new for every draw of noise.

    The noise is only as private as it is unpredictable: a seed someone can guess or replay (a fixed one, the
    time, a process's default state shared by forked replicas) lets them subtract the noise. PCG64 itself is
    not a cryptographic generator, but its state here comes from os.urandom, is never stored or logged, and
    nothing derived from it is released except the noised value (a sum, or on a device a masked input that
    only the sum unmasks), so an observer sees outputs masked by the signal rather than raw draws to
    reconstruct the state from. Drawing millions of floats from os.urandom directly would give the same
    protection at many times the cost."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(int.from_bytes(os.urandom(32), "big"))))


def device_stddev(sum_stddev: float, min_inputs: int) -> float:
    """sigma_sum / sqrt(m): m devices' shares add up to exactly sigma_sum, more devices to more."""
    if min_inputs < 1:
        raise ValueError("min_inputs must be >= 1")
    if not (math.isfinite(sum_stddev) and sum_stddev >= 0):
        raise ValueError("sum_stddev must be finite and >= 0")
    return sum_stddev / math.sqrt(min_inputs)


def tail_probability(tau: float = TAIL_SIGMAS) -> float:
    """P(|N(0, 1)| > tau): the chance that the clamp at C + tau sigma moves one noised coordinate."""
    return math.erfc(tau / math.sqrt(2))


def norm_bound(stddev: float, dim: int, t: float = NORM_TAIL) -> float:
    """A bound on the L2 norm of N(0, stddev^2 I_dim) that fails with probability at most exp(-t^2 / 2).

    The norm is stddev-Lipschitz in the standard normal vector, so Gaussian concentration (Laurent and
    Massart 2000; Boucheron, Lugosi, Massart, Thm. 5.6) puts it above its mean plus stddev t with probability
    at most exp(-t^2 / 2), and its mean is at most stddev sqrt(dim). At t = 10 that is 1.9e-22."""
    return stddev * (math.sqrt(dim) + t)
