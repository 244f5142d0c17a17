"""The compact update encodings: round trips within their stated error, and refusal of what no honest
encoder produces."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedface_common import tensors, update_codec
from fedface_common.tensors import TensorInfo, TensorSpecError
from fedface_common.update_codec import MAX_ABS_DELTA, MAX_SCALE, QuantizationError, UpdateEncodingError
from fedface_common.wire import CLASS_EMBEDDING_TENSOR, EMBEDDING_BN_MEAN, HEAD_SECOND_MOMENT

# float32 deltas within the compact encodings' range, subnormals included (the smallest steps there are).
DELTAS = hnp.arrays(
    np.float32, hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=6),
    elements=st.floats(-MAX_ABS_DELTA, MAX_ABS_DELTA, width=32, allow_nan=False, allow_infinity=False),
)
# float16's unit roundoff, and half the spacing of its subnormals: the most rounding to F16 may cost.
F16_EPS, F16_TINY = 2.0**-11, 2.0**-25


def _round_trip(delta: np.ndarray, encoding: update_codec.Encoding) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Encode, write to and read back from safetensors bytes, decode: what the server folds."""
    body = tensors.encode(update_codec.encode({"w": delta}, encoding))
    expected = {"w": TensorInfo("F32", delta.shape)}
    wire = tensors.decode(body, update_codec.wire_spec(expected, encoding))
    return wire, update_codec.decode(wire, encoding, expected)["w"]


@settings(max_examples=300, deadline=None)
@given(DELTAS)
def test_float16_round_trip_is_within_float16_rounding_of_each_value(delta: np.ndarray) -> None:
    wire, back = _round_trip(delta, "float16")
    assert wire["w"].dtype == np.float16 and back.dtype == np.float32 and back.shape == delta.shape
    error = np.abs(back.astype(np.float64) - delta.astype(np.float64))
    assert (error <= np.abs(delta.astype(np.float64)) * F16_EPS + F16_TINY).all()


@settings(max_examples=300, deadline=None)
@given(DELTAS)
def test_int8_round_trip_is_within_half_a_step(delta: np.ndarray) -> None:
    wire, back = _round_trip(delta, "int8")
    q, scale = wire["w"], float(wire[update_codec.scale_name("w")][0])
    assert q.dtype == np.int8 and q.shape == delta.shape and back.dtype == np.float32
    assert (q >= -127).all() and 0.0 <= scale <= MAX_SCALE
    peak = float(np.abs(delta.astype(np.float64)).max()) if delta.size else 0.0
    # The scale is max|delta| / 127, rounded up to a float32 (only what float32 rounding demands), and
    # never below the smallest normal float32.
    tiny = float(np.finfo(np.float32).tiny)
    assert scale == 0.0 or (peak / 127 <= scale <= max(peak / 127 * (1 + 2**-22), tiny))
    error = np.abs(back.astype(np.float64) - delta.astype(np.float64))
    # s / 2 from quantisation, plus the float32 rounding of q * s (subnormal products included).
    assert (error <= scale / 2 + np.abs(delta.astype(np.float64)) * 2.0**-23 + 2.0**-149).all()


@pytest.mark.parametrize("encoding", ["float16", "int8"])
def test_zero_tensors_come_back_exactly_zero(encoding: update_codec.Encoding) -> None:
    wire, back = _round_trip(np.zeros((4, 3), np.float32), encoding)
    assert (back == 0).all() and not np.signbit(back).any()
    if encoding == "int8":
        assert float(wire[update_codec.scale_name("w")][0]) == 0.0


@pytest.mark.parametrize("value", [0.3, -0.3, 1e-20, 1e-33, 65504.0, -7.0])
def test_all_equal_tensors_use_the_end_of_the_int8_range_and_come_back(value: float) -> None:
    delta = np.full((5, 2), value, np.float32)
    wire, back = _round_trip(delta, "int8")
    assert (np.abs(wire["w"]) == 127).all()
    np.testing.assert_allclose(back, delta, rtol=2**-22, atol=0)
    _, back16 = _round_trip(delta, "float16")
    assert np.unique(back16).size == 1


def test_wire_spec_compresses_backbone_deltas_and_keeps_the_rest_float32() -> None:
    spec = {"conv.weight": TensorInfo("F32", (4, 3)), CLASS_EMBEDDING_TENSOR: TensorInfo("F32", (8,)),
            HEAD_SECOND_MOMENT: TensorInfo("F32", (6, 6)), EMBEDDING_BN_MEAN: TensorInfo("F32", (8,))}
    assert update_codec.wire_spec(spec, "float32") == spec
    half = update_codec.wire_spec(spec, "float16")
    assert half["conv.weight"] == TensorInfo("F16", (4, 3)) and len(half) == 4
    int8 = update_codec.wire_spec(spec, "int8")
    assert int8["conv.weight"] == TensorInfo("I8", (4, 3))
    assert int8["fedface.scale.conv.weight"] == TensorInfo("F32", (1,))
    for name in (CLASS_EMBEDDING_TENSOR, HEAD_SECOND_MOMENT, EMBEDDING_BN_MEAN):
        assert half[name] == int8[name] == spec[name]
    assert len(int8) == 5
    with pytest.raises(ValueError, match="reserved"):
        update_codec.wire_spec({"fedface.scale.x": TensorInfo("F32", (1,))}, "int8")


def test_encode_refuses_what_the_encoding_cannot_carry() -> None:
    for encoding in ("float16", "int8"):
        with pytest.raises(UpdateEncodingError, match="NaN"):
            update_codec.encode({"w": np.array([0.0, np.nan], np.float32)}, encoding)
        with pytest.raises(UpdateEncodingError, match="exceeds"):
            update_codec.encode({"w": np.array([7e4], np.float32)}, encoding)
    # float32 sends what it gets, as before: the server judges it.
    sent = update_codec.encode({"w": np.array([np.inf], np.float32)}, "float32")
    assert np.isinf(sent["w"]).all()


def test_decode_refuses_another_encoding_and_out_of_range_int8() -> None:
    expected = {"w": TensorInfo("F32", (3,))}
    int8 = update_codec.encode({"w": np.array([1.0, -2.0, 0.5], np.float32)}, "int8")
    with pytest.raises(TensorSpecError):  # an int8 body where float32 is expected
        update_codec.decode(int8, "float32", expected)
    with pytest.raises(TensorSpecError):  # q without its scale
        update_codec.decode({"w": int8["w"]}, "int8", expected)
    for bad_scale in (-1.0, MAX_SCALE * 2, np.nan, np.inf):
        with pytest.raises(QuantizationError):
            update_codec.decode({**int8, "fedface.scale.w": np.array([bad_scale], np.float32)}, "int8", expected)
    with pytest.raises(QuantizationError, match="-128"):
        update_codec.decode({**int8, "w": np.array([-128, 0, 1], np.int8)}, "int8", expected)


def test_encoding_of_reads_the_round_parameter() -> None:
    assert update_codec.encoding_of({}) == "float32"
    assert update_codec.encoding_of({"update_encoding": "int8"}) == "int8"
    with pytest.raises(ValueError, match="unknown"):
        update_codec.encoding_of({"update_encoding": "int4"})
