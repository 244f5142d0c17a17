"""Shamir t-out-of-n secret sharing of 32-byte secrets (Bell et al., CCS 2020, Sec. 2; Shamir 1979).

The field is GF(p) with p = 2^256 + 297, the smallest prime above 2^256: every 32-byte secret is one
field element as it stands (no chunking), and a share's y value is 33 bytes. A share's x value is a
small positive integer; in the protocol it is 1 + the holder's position in the round's sorted device
list, so the server knows which x belongs to whom without trusting the share.

Reconstruction interpolates at 0 through the first t shares (by x) and checks that every further share
lies on the same polynomial of degree t - 1, so a corrupted share is detected whenever more than t are
at hand. Below t shares, duplicate x values or inconsistent shares are refused with a typed error."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PRIME = 2**256 + 297
SECRET_BYTES = 32
ELEMENT_BYTES = 33
MAX_X = 2**32 - 1  # far below p, so x values never collide modulo p


class ShamirError(ValueError):
    """Shares that cannot yield the secret."""


class TooFewShares(ShamirError):
    def __init__(self, have: int, need: int) -> None:
        super().__init__(f"{have} shares, {need} needed")
        self.have, self.need = have, need


class DuplicateShareIndex(ShamirError):
    """Two shares claim the same x: a replay or a forgery; never silently pick one."""


class InconsistentShares(ShamirError):
    """The shares do not lie on one polynomial of degree t - 1 (or interpolate outside 32 bytes)."""


@dataclass(frozen=True)
class Share:
    x: int
    y: int

    def y_bytes(self) -> bytes:
        return self.y.to_bytes(ELEMENT_BYTES, "big")

    @classmethod
    def from_bytes(cls, x: int, y: bytes) -> Share:
        if len(y) != ELEMENT_BYTES:
            raise ShamirError(f"a share value is {ELEMENT_BYTES} bytes, got {len(y)}")
        value = int.from_bytes(y, "big")
        if value >= PRIME:
            raise ShamirError("share value outside the field")
        return cls(x=x, y=value)


def split(secret: bytes, n: int, t: int) -> list[Share]:
    """n shares of `secret` at x = 1..n, any t of which reconstruct it."""
    return split_at(secret, t, range(1, n + 1))


def split_at(secret: bytes, t: int, xs: Iterable[int]) -> list[Share]:
    """Shares of `secret` at the given distinct x values, any t of which reconstruct it."""
    points = list(xs)
    if len(secret) != SECRET_BYTES:
        raise ShamirError(f"secrets are {SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= t <= len(points):
        raise ShamirError(f"threshold {t} must be in [1, {len(points)}] for {len(points)} shares")
    _check_xs(points)
    # The constant term is the secret; the others must be uniform for t - 1 shares to reveal nothing.
    coefficients = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(t - 1)]
    return [Share(x=x, y=_horner(coefficients, x)) for x in points]


def reconstruct(shares: Iterable[Share], t: int) -> bytes:
    """The secret from at least t shares; every share beyond the first t must agree with them."""
    if t < 1:
        raise ShamirError("threshold must be >= 1")
    ordered = sorted(shares, key=lambda s: s.x)
    _check_xs([s.x for s in ordered])
    for s in ordered:
        if not 0 <= s.y < PRIME:
            raise ShamirError("share value outside the field")
    if len(ordered) < t:
        raise TooFewShares(len(ordered), t)
    basis, rest = ordered[:t], ordered[t:]
    xs, ys = [s.x for s in basis], [s.y for s in basis]
    weights = _barycentric_weights(xs)
    for extra in rest:
        if _evaluate(xs, ys, weights, extra.x) != extra.y:
            raise InconsistentShares(f"share at x={extra.x} is not on the polynomial through the others")
    secret = _evaluate(xs, ys, weights, 0)
    if secret >= 2 ** (8 * SECRET_BYTES):
        raise InconsistentShares("the shares interpolate to a value that is not a 32-byte secret")
    return secret.to_bytes(SECRET_BYTES, "big")


def _check_xs(xs: Sequence[int]) -> None:
    seen: set[int] = set()
    for x in xs:
        if not 1 <= x <= MAX_X:
            raise ShamirError(f"share index {x} outside [1, {MAX_X}]")
        if x in seen:
            raise DuplicateShareIndex(f"share index {x} appears twice")
        seen.add(x)


def _horner(coefficients: Sequence[int], x: int) -> int:
    value = 0
    for c in reversed(coefficients):
        value = (value * x + c) % PRIME
    return value


def _barycentric_weights(xs: Sequence[int]) -> list[int]:
    # w_i = 1 / prod_{j != i} (x_i - x_j): computed once, they let each evaluation cost O(t).
    weights = []
    for i, xi in enumerate(xs):
        denominator = 1
        for j, xj in enumerate(xs):
            if j != i:
                denominator = denominator * (xi - xj) % PRIME
        weights.append(pow(denominator, -1, PRIME))
    return weights


def _evaluate(xs: Sequence[int], ys: Sequence[int], weights: Sequence[int], z: int) -> int:
    """The interpolating polynomial at z: sum_i y_i w_i prod_{j != i} (z - x_j)."""
    if z in xs:
        return ys[xs.index(z)] % PRIME
    t = len(xs)
    prefix = [1] * (t + 1)
    for i, x in enumerate(xs):
        prefix[i + 1] = prefix[i] * (z - x) % PRIME
    total, suffix = 0, 1
    for i in range(t - 1, -1, -1):
        total = (total + ys[i] * weights[i] % PRIME * prefix[i] % PRIME * suffix) % PRIME
        suffix = suffix * (z - xs[i]) % PRIME
    return total
