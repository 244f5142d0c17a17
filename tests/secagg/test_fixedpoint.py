"""Fixed point in Z_{2^32}: the sum of up to n clipped inputs never wraps, and decodes to the float sum of
the clipped inputs within n * 0.5 / scale per coordinate."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedface_common.secagg import fixedpoint

FLOATS = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.integers(1, 50), st.floats(1e-3, 1e3), st.integers(1, 40), st.data())
def test_decoded_sum_is_within_the_stated_bound(n: int, clip: float, dim: int, data: st.DataObject) -> None:
    scale = fixedpoint.choose_scale(n, clip)
    inputs = [data.draw(hnp.arrays(np.float32, dim, elements=FLOATS)) for _ in range(data.draw(st.integers(1, n)))]
    total = np.zeros(dim, np.uint32)
    for x in inputs:
        total += fixedpoint.encode(x, clip, scale)
    clipped = [fixedpoint.clip_to_norm(x, clip) for x in inputs]
    for x in clipped:
        assert np.linalg.norm(x) <= clip * (1 + 1e-12) and np.abs(x).max(initial=0) <= clip
    exact = np.array([math.fsum(col) for col in np.array(clipped).T])
    error = np.abs(fixedpoint.decode(total, scale) - exact)
    # fsum is exact to the last bit; the decoded value carries one float64 rounding of its own.
    assert (error <= fixedpoint.max_abs_error(len(inputs), scale) * (1 + 1e-12)).all()


@pytest.mark.parametrize("n", [1, 2, 7, 100, 10_000])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_n_inputs_at_the_extreme_do_not_wrap(n: int, sign: float) -> None:
    clip = 3.0
    scale = fixedpoint.choose_scale(n, clip)
    one = fixedpoint.encode(np.array([sign * clip, 0.0]), clip, scale)
    total = (one.astype(np.uint64) * n % 2**32).astype(np.uint32)
    decoded = fixedpoint.decode(total, scale)
    assert decoded[0] == pytest.approx(sign * n * clip, abs=fixedpoint.max_abs_error(n, scale))
    assert np.sign(decoded[0]) == sign


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.integers(1, 2**20), st.floats(1e-6, 1e6))
def test_scale_is_the_largest_power_of_two_that_fits(n: int, clip: float) -> None:
    scale = fixedpoint.choose_scale(n, clip)
    assert math.log2(scale).is_integer()
    assert fixedpoint.fits(n, clip, scale) and not fixedpoint.fits(n, clip, 2 * scale)
    assert n * clip * scale < 2**31  # the bound as usually stated follows


def test_nearest_rounding_and_twos_complement() -> None:
    encoded = fixedpoint.encode(np.array([0.25, -0.25, 0.75, -1.0]), 10.0, 2.0)
    assert encoded.tolist() == [0, 0, 2, 2**32 - 2]  # 0.5 and -0.5 round to even; 1.5 -> 2


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        fixedpoint.encode(np.array([np.nan]), 1.0, 1.0)
    with pytest.raises(ValueError):
        fixedpoint.choose_scale(0, 1.0)
    with pytest.raises(ValueError):
        fixedpoint.choose_scale(3, 0.0)
    with pytest.raises(ValueError):
        fixedpoint.encode(np.zeros(2), 1.0, 2.0**31)
    with pytest.raises(ValueError):
        fixedpoint.decode(np.zeros(2, np.int64), 1.0)
