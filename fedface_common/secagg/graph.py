"""The neighbour graph of SecAgg+ and the choice of its degree k and threshold t.

Graph (Bell et al., CCS 2020, Sec. 4): a Harary graph H(n, k) under a random relabelling. Devices sit
on a ring in an order drawn from the round's public seed (sorted by SHA-256(seed || id)); each is
adjacent to the k/2 nearest on either side. k is even and below n - 1, or k = n - 1, the complete
graph (the original SecAgg of Bonawitz et al. 2017). Every party derives the same graph from the seed
and the round's device list, so nobody has to trust anybody's list of neighbours.

Parameters. Model: each of the n devices drops out at some stage of the round independently with
probability at most `dropout` (delta), and, optionally, colludes with the server with probability at
most `corrupt` (gamma). With sigma = `security_bits` and eta = `correctness_bits`, (k, t) must satisfy

  (1) k/2 < t <= k. A majority threshold, as in the paper's analysis: any two sets of t neighbours
      of one device overlap, so a server that asked some neighbours for a device's self-mask share and
      others for its masking-key share would need a device in the overlap to answer both, which no
      honest device does (`device.SecAggDevice.unmask`).
  (2) correctness:  n * P[Bin(k, 1 - delta) < t] <= 2^-eta.
      Each needed secret (a survivor's self-mask seed, a dropped device's masking key) keeps t live
      holders among its k neighbours; union bound over the n devices.
  (3) privacy of the sum, k < n - 1:  n * (delta + gamma)^(k/2) <= 2^-sigma.
      The server learns the sum of each connected component of the graph on honest survivors, so that
      graph must stay connected. On the ring, removing nodes disconnects the rest only if k/2
      consecutive positions are all removed; the relabelling makes positions independent of which
      devices drop, and P[k/2 given positions all removed] <= (delta + gamma)^(k/2) (also when a fixed
      fraction drops, since C(d, m)/C(n, m) <= (d/n)^m); union bound over the n starting positions.
      The complete graph stays connected under any removal.
  (4) collusion, gamma > 0:  n * P[Bin(k, gamma) >= t] <= 2^-sigma.
      No honest device has t corrupt neighbours, who could pool the shares of its masking key.

`choose_parameters` returns the smallest such k (fewest key agreements and masks per device) with the
smallest t meeting (1) and (4), which leaves the most room for dropouts in (2). These are exact
binomial tails under the stated model, not the asymptotic constants of the paper's theorems."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence

MAX_NEIGHBOURS = 1_000


class ParameterError(ValueError):
    """No (k, t) meets the requested bounds for this many devices and this dropout rate."""


def valid_degree(n: int, k: int) -> bool:
    return n >= 2 and (k == n - 1 or (k >= 2 and k % 2 == 0 and k < n - 1))


def ring_order(devices: Sequence[str], seed: bytes) -> list[str]:
    """The random relabelling: devices in the order of SHA-256(seed || id), the same for every party."""
    return sorted(devices, key=lambda d: (hashlib.sha256(seed + d.encode()).digest(), d))


def neighbours(devices: Sequence[str], k: int, seed: bytes) -> dict[str, tuple[str, ...]]:
    """Each device's k neighbours (sorted) in the random Harary graph H(n, k)."""
    _check(devices, k)
    if k == len(devices) - 1:
        return {d: tuple(sorted(e for e in devices if e != d)) for d in devices}
    ring = ring_order(devices, seed)
    return {d: _around(ring, p, k) for p, d in enumerate(ring)}


def neighbours_of(devices: Sequence[str], k: int, seed: bytes, device: str) -> tuple[str, ...]:
    """One device's neighbours, as `neighbours` gives them."""
    _check(devices, k)
    if device not in devices:
        raise ValueError(f"{device} is not one of the round's devices")
    if k == len(devices) - 1:
        return tuple(sorted(d for d in devices if d != device))
    ring = ring_order(devices, seed)
    return _around(ring, ring.index(device), k)


def _check(devices: Sequence[str], k: int) -> None:
    n = len(devices)
    if len(set(devices)) != n:
        raise ValueError("device ids must be distinct")
    if not valid_degree(n, k):
        raise ValueError(f"degree {k} is neither an even number below {n - 1} nor {n - 1} (complete)")


def _around(ring: Sequence[str], position: int, k: int) -> tuple[str, ...]:
    # k < n - 1 keeps the k/2 steps either way from meeting, so these are k distinct devices.
    n, half = len(ring), k // 2
    return tuple(sorted(ring[(position + j) % n] for j in range(-half, half + 1) if j != 0))


def choose_parameters(
    n: int, dropout: float, *, corrupt: float = 0.0, security_bits: float = 40.0, correctness_bits: float = 20.0
) -> tuple[int, int]:
    """(k, t) for n devices of which a fraction `dropout` may drop at any stage (see the module doc)."""
    if n < 2:
        raise ParameterError("secure aggregation needs at least 2 devices")
    if not (0.0 <= dropout < 1.0 and 0.0 <= corrupt < 1.0 and dropout + corrupt < 1.0):
        raise ParameterError("dropout and corrupt must be fractions in [0, 1) with a sum below 1")
    log_n = math.log2(n)
    removed = dropout + corrupt
    for k in _degrees(n):
        if k < n - 1 and removed > 0 and log_n + (k / 2) * math.log2(removed) > -security_bits:
            continue
        t = k // 2 + 1
        if corrupt > 0:
            while t <= k and log_n + log2_binomial_at_least(k, corrupt, t) > -security_bits:
                t += 1
            if t > k:
                continue
        if log_n + log2_binomial_below(k, 1.0 - dropout, t) <= -correctness_bits:
            return k, t
    raise ParameterError(
        f"no k <= {min(n - 1, MAX_NEIGHBOURS)} meets 2^-{security_bits:g} privacy and 2^-{correctness_bits:g} "
        f"correctness for n={n} at dropout {dropout:g}; fewer correctness bits or a lower dropout rate may"
    )


def _degrees(n: int) -> list[int]:
    ks = [k for k in range(2, min(n - 1, MAX_NEIGHBOURS + 1), 2)]
    if n - 1 <= MAX_NEIGHBOURS:
        ks.append(n - 1)
    return ks


def log2_binomial_below(k: int, p: float, t: int) -> float:
    """log2 P[Bin(k, p) < t]."""
    return _log2_sum(_log2_pmf(k, p, i) for i in range(0, min(t, k + 1)))


def log2_binomial_at_least(k: int, p: float, t: int) -> float:
    """log2 P[Bin(k, p) >= t]."""
    return _log2_sum(_log2_pmf(k, p, i) for i in range(max(t, 0), k + 1))


def _log2_pmf(k: int, p: float, i: int) -> float:
    if p <= 0.0:
        return 0.0 if i == 0 else -math.inf
    if p >= 1.0:
        return 0.0 if i == k else -math.inf
    ln = math.lgamma(k + 1) - math.lgamma(i + 1) - math.lgamma(k - i + 1) + i * math.log(p) + (k - i) * math.log1p(-p)
    return ln / math.log(2)


def _log2_sum(terms: Iterable[float]) -> float:
    values = [v for v in terms if v != -math.inf]
    if not values:
        return -math.inf
    top = max(values)
    return top + math.log2(sum(2.0 ** (v - top) for v in values))
