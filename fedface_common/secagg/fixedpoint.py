"""Fixed-point encoding of float updates into Z_{2^32}, the group SecAgg+ sums in (Bell et al., CCS 2020,
Sec. 3 sums vectors over Z_R; here R = 2^32 so numpy's uint32 wrap-around is the group operation).

A device clips its update to L2 norm at most C; then every coordinate satisfies |x_i| <= C. With
distributed DP it adds N(0, sigma^2) noise per coordinate, and a noised coordinate is unbounded, so it
clamps each one to [-B, B] with B = C + tau sigma (`coordinate_bound`; tau = TAIL_SIGMAS = 10 in
fedface_common/dp_noise.py, where the clamp's probability of changing anything, 1.5e-23 per coordinate,
is worked out). Without noise B = C. Either way |x_i| <= B. It maps x_i to q_i = round(x_i * scale)
(nearest, ties to even: deterministic, so no randomness is spent on rounding, and each q_i is off by at
most 1/2), stored as q_i mod 2^32. With at most n inputs in a round the true integer sum satisfies
|sum q_i| <= n * (B * scale + 1/2), so `choose_scale` picks the largest power of two with
n * (B * scale + 1/2) <= 2^31 - 1 (which implies n * B * scale < 2^31): the sum mod 2^32, read as a
signed 32-bit integer, is then the exact integer sum, with no wrap. A power of two also makes x * scale
and the decoding division exact in float64, so the only error of the decoded sum against the float64 sum
of the inputs as encoded (clipped, and noised and clamped where there is noise) is rounding: at most
n * 0.5 / scale per coordinate (`max_abs_error`)."""

from __future__ import annotations

import math

import numpy as np

from fedface_common.dp_noise import TAIL_SIGMAS

MODULUS = 2**32
_HALF = 2**31
_MAX_SUM = 2**31 - 1


def coordinate_bound(clip_norm: float, noise_stddev: float = 0.0) -> float:
    """B: the largest |x_i| an input can encode, C + tau sigma (C without noise)."""
    if not (math.isfinite(noise_stddev) and noise_stddev >= 0):
        raise ValueError("noise_stddev must be finite and >= 0")
    return clip_norm + TAIL_SIGMAS * noise_stddev


def choose_scale(max_inputs: int, bound: float) -> float:
    """The largest power of two such that `max_inputs` encoded vectors with |x_i| <= bound cannot wrap."""
    if max_inputs < 1:
        raise ValueError("max_inputs must be >= 1")
    if not (math.isfinite(bound) and bound > 0):
        raise ValueError("bound must be finite and > 0")
    room = _MAX_SUM - max_inputs / 2
    if room <= 0:
        raise ValueError(f"{max_inputs} inputs cannot be summed in 32 bits")
    scale = 2.0 ** math.floor(math.log2(room / (max_inputs * bound)))
    # log2 of a quotient can land a hair above an exact power; step down rather than trust it.
    while not fits(max_inputs, bound, scale):
        scale /= 2
    return scale


def fits(max_inputs: int, bound: float, scale: float) -> bool:
    """Whether the sum of `max_inputs` encodings with |x_i| <= bound at this scale stays within a signed
    32-bit integer."""
    return max_inputs * (bound * scale + 0.5) <= _MAX_SUM


def clip_to_norm(x: np.ndarray, clip_norm: float) -> np.ndarray:
    """x (as float64) scaled down to L2 norm <= clip_norm, then each coordinate clamped to [-C, C].

    The clamp only ever moves a coordinate by float rounding of the rescale; it is what makes
    |x_i| <= C hold exactly, which the no-wrap bound relies on."""
    values = np.asarray(x, dtype=np.float64).ravel()
    if not np.isfinite(values).all():
        raise ValueError("cannot encode non-finite values")
    norm = float(np.linalg.norm(values))
    if norm > clip_norm:
        values = values * (clip_norm / norm)
    return np.clip(values, -clip_norm, clip_norm)


def noised(x: np.ndarray, clip_norm: float, noise_stddev: float, rng: np.random.Generator | None) -> np.ndarray:
    """x clipped to clip_norm, plus N(0, noise_stddev^2) per coordinate, clamped to +-coordinate_bound.

    The noise goes on the clipped update, so that the sum's sensitivity to one device stays C."""
    values = clip_to_norm(x, clip_norm)
    if noise_stddev == 0:
        return values
    if rng is None:
        raise ValueError("noise needs a generator")
    bound = coordinate_bound(clip_norm, noise_stddev)
    return np.clip(values + rng.normal(0.0, noise_stddev, size=values.shape), -bound, bound)


def quantize(values: np.ndarray, bound: float, scale: float) -> np.ndarray:
    """Values with |x_i| <= bound as uint32 fixed point: round(x_i * scale) mod 2^32, nearest rounding."""
    if bound * scale + 0.5 > _MAX_SUM:
        raise ValueError("scale too large for one input, let alone a sum")
    q = np.rint(np.clip(values, -bound, bound) * scale).astype(np.int64)
    return q.astype(np.uint32)  # two's complement: negative values wrap to 2^32 + q


def encode(x: np.ndarray, clip_norm: float, scale: float) -> np.ndarray:
    """The clipped vector as uint32 fixed point, without noise."""
    return quantize(clip_to_norm(x, clip_norm), clip_norm, scale)


def decode(total: np.ndarray, scale: float) -> np.ndarray:
    """The float64 sum from the uint32 sum of encodings, read as signed 32-bit integers."""
    if total.dtype != np.uint32:
        raise ValueError(f"expected a uint32 sum, got {total.dtype}")
    return total.view(np.int32).astype(np.float64) / scale


def max_abs_error(num_inputs: int, scale: float) -> float:
    """Worst-case |decoded sum - sum of the float inputs as encoded| per coordinate, nearest rounding."""
    return num_inputs * 0.5 / scale
