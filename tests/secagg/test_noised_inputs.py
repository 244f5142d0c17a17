"""Distributed DP's arithmetic: the devices' shares add up to at least the accounted noise whoever survives,
a noised input is clipped before its noise and clamped at C + 10 sigma, n such inputs never wrap and decode
within the rounding bound, the round's parameters refuse a scale that leaves the noise no room, and the
device's encoder draws fresh CSPRNG noise."""

from __future__ import annotations

import math
import secrets

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydantic import ValidationError

from coordinator.strategies import dp_noise as coordinator_noise
from coordinator.strategies.dp_noise import noise_shares
from fedface_common import dp_noise
from fedface_common.secagg import fixedpoint
from fedface_common.secagg.device import encode_input
from fedface_common.secagg.messages import SecAggParams
from fedface_common.secagg.task import layout_of

FLOATS = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.floats(1e-6, 1e6), st.integers(1, 10_000), st.integers(0, 10_000))
def test_shares_over_m_give_at_least_the_sums_noise_for_any_survivors(sigma: float, m: int, extra: int) -> None:
    shares = noise_shares("distributed", sigma, m)
    assert shares.server_stddev == 0
    assert shares.device_stddev * math.sqrt(m) == pytest.approx(sigma, rel=1e-12)  # exactly sigma at m inputs
    s = m + extra
    assert s * shares.device_stddev**2 >= sigma**2 * (1 - 1e-12)  # more survivors, more noise, never less


def test_central_mode_keeps_all_the_noise_on_the_server() -> None:
    assert noise_shares("central", 2.5) == coordinator_noise.NoiseShares(server_stddev=2.5, device_stddev=0.0)
    with pytest.raises(ValueError, match="fewest inputs"):
        noise_shares("distributed", 2.5)
    with pytest.raises(ValueError):
        noise_shares("distributed", 2.5, 0)
    with pytest.raises(ValueError, match="unknown DP mode"):
        noise_shares("local", 2.5)  # type: ignore[arg-type]
    assert coordinator_noise.fresh_generator is dp_noise.fresh_generator  # one generator for both sides


def test_the_stated_tail_figures() -> None:
    """The clamp's probability per coordinate, and for a device of 1e7 coordinates, as the docs state them."""
    assert dp_noise.TAIL_SIGMAS == 10
    assert dp_noise.tail_probability() == pytest.approx(1.52e-23, rel=0.01)
    assert 1e7 * dp_noise.tail_probability() == pytest.approx(1.5e-16, rel=0.02)
    rng = np.random.default_rng(0)
    assert float(np.mean(np.abs(rng.standard_normal(2_000_000)) > 3)) == pytest.approx(
        dp_noise.tail_probability(3), rel=0.05)
    # The norm bound holds for every draw here and is not loose by more than t sigma.
    for d in (1, 100, 20_000):
        norms = np.linalg.norm(rng.normal(0, 0.7, size=(200, d)), axis=1)
        assert norms.max() <= dp_noise.norm_bound(0.7, d)
        assert dp_noise.norm_bound(0.7, d) - norms.mean() <= 0.7 * (dp_noise.NORM_TAIL + 1)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.integers(1, 40), st.floats(1e-3, 1e3), st.floats(0, 1e3), st.integers(1, 30), st.data())
def test_noised_inputs_sum_without_wrapping_within_the_bound(n: int, clip: float, sigma: float, dim: int,
                                                             data: st.DataObject) -> None:
    bound = fixedpoint.coordinate_bound(clip, sigma)
    assert bound == clip + 10 * sigma
    scale = fixedpoint.choose_scale(n, bound)
    assert fixedpoint.fits(n, bound, scale) and not fixedpoint.fits(n, bound, 2 * scale)
    seed = data.draw(st.integers(0, 2**32))
    inputs = [data.draw(hnp.arrays(np.float32, dim, elements=FLOATS)) for _ in range(data.draw(st.integers(1, n)))]
    total = np.zeros(dim, np.uint32)
    floats = []
    for i, x in enumerate(inputs):
        value = fixedpoint.noised(x, clip, sigma, np.random.default_rng([seed, i]))
        assert np.abs(value).max() <= bound
        total += fixedpoint.quantize(value, bound, scale)
        floats.append(value)
    exact = np.array([math.fsum(col) for col in np.array(floats).T])
    error = np.abs(fixedpoint.decode(total, scale) - exact)
    assert (error <= fixedpoint.max_abs_error(len(inputs), scale) * (1 + 1e-12)).all()


class _Huge:
    """A generator whose every draw is far in the tail, so each coordinate hits the clamp."""

    def __init__(self, sign: float) -> None:
        self.sign = sign

    def normal(self, loc: float, scale: float, size: tuple[int, ...]) -> np.ndarray:
        return np.full(size, self.sign * 1e6 * scale)


@pytest.mark.parametrize("n", [1, 7, 100, 10_000])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_n_inputs_clamped_at_the_bound_do_not_wrap(n: int, sign: float) -> None:
    clip, sigma = 3.0, 0.5
    bound = clip + 10 * sigma
    scale = fixedpoint.choose_scale(n, bound)
    huge: np.random.Generator = _Huge(sign)  # type: ignore[assignment]
    one = fixedpoint.quantize(fixedpoint.noised(np.array([sign * clip, 0.0]), clip, sigma, huge), bound, scale)
    total = (one.astype(np.uint64) * n % 2**32).astype(np.uint32)
    decoded = fixedpoint.decode(total, scale)
    for value in decoded:  # every coordinate clamped at +-B, with or without the signal
        assert value == pytest.approx(sign * n * bound, abs=fixedpoint.max_abs_error(n, scale))


def test_the_update_is_clipped_before_its_noise() -> None:
    """Sensitivity stays C: a long update is scaled to C first, then noised (not noised, then clipped)."""
    x = np.full(10_000, 5.0)
    values = fixedpoint.noised(x, 1.0, 0.2, np.random.default_rng(1))
    noise = values - x / np.linalg.norm(x)
    assert float(noise.std()) == pytest.approx(0.2, rel=0.05) and abs(float(noise.mean())) < 0.01
    with pytest.raises(ValueError, match="generator"):
        fixedpoint.noised(x, 1.0, 0.2, None)


def _params(n: int, clip: float, noise: float, scale: float) -> SecAggParams:
    return SecAggParams(round_id=1, devices=[f"d{i:02d}" for i in range(n)], neighbours=n - 1, threshold=n // 2 + 1,
                        graph_seed=secrets.token_bytes(32), vector_length=50_000, clip_norm=clip, scale=scale,
                        min_survivors=n // 2 + 1, noise_stddev=noise)


def test_the_round_parameters_refuse_a_scale_without_room_for_the_noise() -> None:
    n, clip, noise = 10, 1.0, 0.3
    roomy = fixedpoint.choose_scale(n, fixedpoint.coordinate_bound(clip, noise))
    assert _params(n, clip, noise, roomy).noise_stddev == noise
    tight = fixedpoint.choose_scale(n, clip)  # fits the clip alone, not the noised coordinates
    assert _params(n, clip, 0.0, tight).noise_stddev == 0
    with pytest.raises(ValidationError, match="wrap"):
        _params(n, clip, noise, tight)
    for bad in (-0.1, math.inf, math.nan):
        with pytest.raises(ValidationError):
            _params(n, clip, bad, roomy)


def test_the_devices_encoder_noises_with_fresh_randomness_only_when_asked() -> None:
    n, clip, noise = 10, 1.0, 0.3
    x = np.random.default_rng(2).standard_normal(50_000) * 0.001
    layout, update = layout_of({"x": (50_000,)}), {"x": x}
    quiet = _params(n, clip, 0.0, fixedpoint.choose_scale(n, clip))
    assert np.array_equal(encode_input(quiet, layout, update), fixedpoint.encode(x, clip, quiet.scale))
    loud = _params(n, clip, noise, fixedpoint.choose_scale(n, fixedpoint.coordinate_bound(clip, noise)))
    first, second = encode_input(loud, layout, update), encode_input(loud, layout, update)
    assert not np.array_equal(first, second)  # a new CSPRNG seed for every call: nothing to replay
    for encoded in (first, second):
        drawn = fixedpoint.decode(encoded, loud.scale) - fixedpoint.clip_to_norm(x, clip)
        assert float(drawn.std()) == pytest.approx(noise, rel=0.03)
    seeded = encode_input(loud, layout, update, rng=np.random.default_rng(7))
    assert np.array_equal(seeded, encode_input(loud, layout, update, rng=np.random.default_rng(7)))
