"""A device's masked vector, alone, looks uniform: byte frequencies pass a chi-square test and every bit
position is balanced, on a vector of a million values. The same statistics flag the unmasked input, an
input "masked" with zero masks, and one masked in its low byte only, so the test has the power to see a
masking bug. The masks are fresh randomness each run (keys come from the OS), so the thresholds sit at a
one-in-a-million false alarm rate."""

from __future__ import annotations

import math
from collections.abc import Callable
from statistics import NormalDist

import numpy as np
import pytest

from fedface_common.secagg import crypto, fixedpoint
from tests.secagg.rounds import make_params, through_share_keys

LENGTH = 1 << 20
FALSE_ALARM = 1e-6


def _chi_square_critical(df: int, p: float) -> float:
    """Wilson-Hilferty: the chi-square upper p-quantile (accurate for df in the hundreds)."""
    z, a = NormalDist().inv_cdf(1 - p), 2 / (9 * df)
    return df * (1 - a + z * math.sqrt(a)) ** 3


def _looks_uniform(vector: np.ndarray) -> bool:
    data = np.ascontiguousarray(vector, dtype="<u4")
    counts = np.bincount(data.view(np.uint8), minlength=256)
    expected = data.nbytes / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    bits = np.unpackbits(data.view(np.uint8).reshape(-1, 4), axis=1, bitorder="little").sum(axis=0)
    z = np.abs(bits - len(data) / 2) / math.sqrt(len(data) / 4)
    # Half the false-alarm budget to each statistic; Bonferroni over 32 two-sided bit tests.
    z_alarm = NormalDist().inv_cdf(1 - FALSE_ALARM / 2 / 64)
    return chi2 < _chi_square_critical(255, FALSE_ALARM / 2) and float(z.max()) < z_alarm


def _fixed_point_update() -> tuple[np.ndarray, float, float]:
    params = make_params(6, 5, 3, length=LENGTH)
    update = np.random.default_rng(0).normal(size=LENGTH) * 1e-3
    return fixedpoint.encode(update, params.clip_norm, params.scale), params.clip_norm, params.scale


def _masked_by_a_device(prg: Callable[..., np.ndarray] | None, monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    params = make_params(6, 5, 3, length=LENGTH)
    devices, _, forwards = through_share_keys(params)
    x, _, _ = _fixed_point_update()
    if prg is not None:
        monkeypatch.setattr(crypto, "prg_uint32", prg)
    me = params.devices[0]
    _, masked, _ = devices[me].mask(x, forwards[me])
    return masked


def test_a_masked_vector_looks_uniform(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _looks_uniform(_masked_by_a_device(None, monkeypatch))


def test_the_prg_alone_looks_uniform() -> None:
    assert _looks_uniform(crypto.prg_uint32(crypto.new_seed(), LENGTH))


def test_the_unmasked_input_does_not() -> None:
    x, _, _ = _fixed_point_update()
    assert not _looks_uniform(x)


def test_masking_with_zero_masks_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    masked = _masked_by_a_device(lambda seed, n, **_: np.zeros(n, np.uint32), monkeypatch)
    assert not _looks_uniform(masked)


def test_masking_only_the_low_byte_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    real = crypto.prg_uint32
    masked = _masked_by_a_device(lambda seed, n, **_: real(seed, n) & np.uint32(0xFF), monkeypatch)
    assert not _looks_uniform(masked)
