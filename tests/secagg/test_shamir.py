"""Shamir sharing over GF(2^256 + 297): any t shares reconstruct, fewer refuse, and shares that repeat an
index or leave the polynomial are refused rather than silently used."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedface_common.secagg import shamir
from fedface_common.secagg.shamir import PRIME, DuplicateShareIndex, InconsistentShares, Share, TooFewShares

SECRETS = st.binary(min_size=32, max_size=32)


def _is_probable_prime(n: int) -> bool:
    """Miller-Rabin over the first 40 primes as bases: a composite passes with probability below 4^-40."""
    bases = [p for p in range(2, 200) if all(p % q for q in range(2, p))][:40]
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in bases:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def test_the_field_is_prime_and_holds_every_32_byte_secret() -> None:
    assert _is_probable_prime(PRIME)
    assert PRIME > 2**256
    assert not any(_is_probable_prime(2**256 + c) for c in range(1, 297, 2))  # the smallest such prime


@settings(max_examples=150, deadline=None, derandomize=True)
@given(SECRETS, st.data())
def test_any_t_of_n_shares_reconstruct(secret: bytes, data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 24), label="n")
    t = data.draw(st.integers(1, n), label="t")
    shares = shamir.split(secret, n, t)
    assert [s.x for s in shares] == list(range(1, n + 1))
    subset = data.draw(st.lists(st.sampled_from(shares), min_size=t, max_size=n, unique=True), label="subset")
    assert shamir.reconstruct(subset, t) == secret


@settings(max_examples=100, deadline=None, derandomize=True)
@given(SECRETS, st.data())
def test_fewer_than_t_shares_are_refused(secret: bytes, data: st.DataObject) -> None:
    n = data.draw(st.integers(2, 24), label="n")
    t = data.draw(st.integers(2, n), label="t")
    shares = shamir.split(secret, n, t)
    subset = data.draw(st.lists(st.sampled_from(shares), max_size=t - 1, unique=True), label="subset")
    with pytest.raises(TooFewShares) as info:
        shamir.reconstruct(subset, t)
    assert (info.value.have, info.value.need) == (len(subset), t)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(SECRETS, st.data())
def test_a_share_off_the_polynomial_is_detected_when_more_than_t_are_at_hand(
    secret: bytes, data: st.DataObject
) -> None:
    n = data.draw(st.integers(2, 16), label="n")
    t = data.draw(st.integers(1, n - 1), label="t")
    shares = shamir.split(secret, n, t)
    victim = data.draw(st.integers(0, n - 1), label="victim")
    delta = data.draw(st.integers(1, PRIME - 1), label="delta")
    shares[victim] = Share(x=shares[victim].x, y=(shares[victim].y + delta) % PRIME)
    with pytest.raises(InconsistentShares):
        shamir.reconstruct(shares, t)


def test_duplicate_indices_are_refused_even_with_equal_values() -> None:
    shares = shamir.split(bytes(32), 5, 3)
    with pytest.raises(DuplicateShareIndex):
        shamir.reconstruct([shares[0], shares[0], shares[1]], 3)
    with pytest.raises(DuplicateShareIndex):
        shamir.reconstruct([shares[0], Share(x=shares[0].x, y=(shares[0].y + 1) % PRIME), shares[1]], 3)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(shamir.ShamirError):
        shamir.split(b"short", 3, 2)
    with pytest.raises(shamir.ShamirError):
        shamir.split(bytes(32), 3, 4)
    with pytest.raises(shamir.ShamirError):
        shamir.split(bytes(32), 3, 0)
    with pytest.raises(shamir.ShamirError):
        shamir.split_at(bytes(32), 2, [0, 1])
    with pytest.raises(shamir.ShamirError):
        Share.from_bytes(1, PRIME.to_bytes(33, "big"))
    with pytest.raises(shamir.ShamirError):
        Share.from_bytes(1, bytes(32))


def test_shares_that_interpolate_beyond_32_bytes_are_refused() -> None:
    # Two points on a line whose value at 0 is 2^256 (in the field, but not a 32-byte secret).
    secret = 2**256
    shares = [Share(x=1, y=(secret + 5) % PRIME), Share(x=2, y=(secret + 10) % PRIME)]
    with pytest.raises(InconsistentShares):
        shamir.reconstruct(shares, 2)


def test_share_values_round_trip_through_bytes() -> None:
    for share in shamir.split(b"\xff" * 32, 4, 2):
        assert Share.from_bytes(share.x, share.y_bytes()) == share
