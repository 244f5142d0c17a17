"""Compact encodings of a device's update, shared by the agent (encode) and the coordinator (validate, decode).

A round's `update_encoding` (an algorithm parameter, so devices get it in `TrainingConfig.params`) says
how the backbone deltas travel inside the update's safetensors body:

* ``float32`` (default): every tensor as F32, exactly as without this module.
* ``float16``: each backbone delta ``<name>`` as F16 of the same shape (half the bytes).
* ``int8``: each backbone delta ``<name>`` as I8 of the same shape, q, plus a scalar F32 tensor
  ``fedface.scale.<name>`` of shape (1,), s, so that delta ~= q * s. Symmetric per-tensor quantisation:
  s is the smallest normal float32 with max|delta| / s <= 127 (about max|delta| / 127; 0 for an all-zero
  tensor) and q = round(delta / s) in [-127, 127], so each element is off by at most s / 2. -128 is
  never produced and is refused, so that q and -q always mean opposite steps.

Backbone deltas are the tensors compression is meant for: millions of values, steps the server averages
over many devices (so rounding noise averages out too). The tensors in `EXACT_TENSORS` stay F32 in every
encoding: the class embedding (a direction the server stores as sent and spreads), the discriminant's
moments (the server inverts their scatter: rounding could make it indefinite) and the embedding BN's
running statistics (with `embedding_stats` they are moments the server takes as they are, not steps).
They are a few hundred kilobytes at most, so compressing them would save nothing worth their precision.

Both compressed encodings carry deltas of at most `MAX_ABS_DELTA` in magnitude (float16's largest
finite value): no sane local step comes near it, and the bound lets the server refuse absurd int8
scales before folding anything."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, cast, get_args

import numpy as np

from fedface_common.tensors import TensorInfo, TensorSpec, check_spec, spec_of
from fedface_common.wire import (
    CLASS_EMBEDDING_TENSOR,
    EMBEDDING_BN_MEAN,
    EMBEDDING_BN_VAR,
    HEAD_MEAN,
    HEAD_SECOND_MOMENT,
    HEAD_WITHIN_SCATTER,
)

Encoding = Literal["float32", "float16", "int8"]
ENCODINGS: tuple[Encoding, ...] = get_args(Encoding)
DEFAULT_ENCODING: Encoding = "float32"
# The key of the round's algorithm parameters (and so of TrainingConfig.params) that names the encoding.
ENCODING_PARAM = "update_encoding"
SCALE_PREFIX = "fedface.scale."
EXACT_TENSORS = frozenset({CLASS_EMBEDDING_TENSOR, HEAD_MEAN, HEAD_SECOND_MOMENT, HEAD_WITHIN_SCATTER,
                           EMBEDDING_BN_MEAN, EMBEDDING_BN_VAR})
MAX_ABS_DELTA = float(np.finfo(np.float16).max)  # 65504
QMAX = 127
# Refuse only what no honest encoder makes: its scale can exceed MAX_ABS_DELTA / 127 by an ulp or two.
MAX_SCALE = 65536.0 / QMAX
_WIRE_DTYPE = {"float16": "F16", "int8": "I8"}


class UpdateEncodingError(ValueError):
    """The deltas cannot be sent in the requested encoding (non-finite, or beyond its range)."""


class QuantizationError(ValueError):
    """An int8 tensor or its scale is outside what the encoding allows."""


def encoding_of(params: Mapping[str, Any]) -> Encoding:
    """The encoding a round's parameters ask for; unknown names raise ValueError."""
    value = params.get(ENCODING_PARAM) or DEFAULT_ENCODING
    if value not in ENCODINGS:
        raise ValueError(f"unknown {ENCODING_PARAM} {value!r}; known: {list(ENCODINGS)}")
    return cast(Encoding, value)


def is_compressed(name: str) -> bool:
    """Whether a tensor of the update is sent in the compact encoding (a backbone delta) or always F32."""
    return name not in EXACT_TENSORS


def scale_name(name: str) -> str:
    return SCALE_PREFIX + name


def wire_spec(spec: TensorSpec, encoding: Encoding) -> TensorSpec:
    """What the body must hold, given the F32 update spec: the exact names, dtypes and shapes."""
    if encoding == "float32":
        return dict(spec)
    out: TensorSpec = {}
    for name, info in spec.items():
        if name.startswith(SCALE_PREFIX):
            raise ValueError(f"tensor {name!r} uses the prefix {SCALE_PREFIX!r} reserved for int8 scales")
        if info.dtype != "F32":
            raise ValueError(f"update tensor {name!r} is {info.dtype}; only F32 deltas can be encoded")
        if not is_compressed(name):
            out[name] = info
            continue
        out[name] = TensorInfo(_WIRE_DTYPE[encoding], info.shape)
        if encoding == "int8":
            out[scale_name(name)] = TensorInfo("F32", (1,))
    return out


def _int8_scale(peak: float) -> np.float32:
    """The smallest normal float32 s with peak / s <= 127 (checked in float64, as `quantize` divides).
    Never subnormal: a subnormal float32 has too few significant bits to be a scale (rounding up to one can
    overshoot max|delta| / 127 by 1e-5 relative), and tensors that small are zero for any model."""
    if peak == 0.0:
        return np.float32(0.0)
    scale = max(np.float32(peak / QMAX), np.finfo(np.float32).tiny)
    while scale == 0.0 or peak / float(scale) > QMAX:  # float32 rounding (or underflow) went below
        scale = np.nextafter(scale, np.float32(np.inf))
    return scale


def quantize(delta: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """Symmetric int8 quantisation of one tensor: (q, s) with |delta - q * s| <= s / 2 elementwise."""
    d = np.asarray(delta, dtype=np.float64)
    peak = float(np.abs(d).max()) if d.size else 0.0
    scale = _int8_scale(peak)
    if scale == 0.0:
        return np.zeros(d.shape, dtype=np.int8), scale
    q = np.clip(np.rint(d / float(scale)), -QMAX, QMAX)
    return q.astype(np.int8), scale


def dequantize(q: np.ndarray, scale: np.ndarray | np.floating[Any] | float) -> np.ndarray:
    return np.multiply(q, np.float32(scale), dtype=np.float32)


def _checked(name: str, delta: np.ndarray) -> np.ndarray:
    arr = np.asarray(delta, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise UpdateEncodingError(f"delta {name!r} contains NaN or Inf")
    if arr.size and float(np.abs(arr).max()) > MAX_ABS_DELTA:
        raise UpdateEncodingError(f"delta {name!r} exceeds {MAX_ABS_DELTA:g} in magnitude, beyond a compact update")
    return arr


def encode(deltas: Mapping[str, np.ndarray], encoding: Encoding) -> dict[str, np.ndarray]:
    """The tensors to write into the update's safetensors body (see the module's docstring)."""
    if encoding == "float32":
        return dict(deltas)
    out: dict[str, np.ndarray] = {}
    for name, delta in deltas.items():
        if not is_compressed(name):
            out[name] = delta
            continue
        arr = _checked(name, delta)
        if encoding == "float16":
            out[name] = arr.astype(np.float16)
        else:
            out[name], scale = quantize(arr)
            out[scale_name(name)] = np.array([scale], dtype=np.float32)
    return out


def check_tensor(name: str, arr: np.ndarray) -> None:
    """The int8 encoding's value ranges, for one tensor of a body whose spec already matched.

    Finiteness is the caller's check (it applies to every float tensor); this adds that a scale is
    non-negative and at most MAX_SCALE, and that q never uses -128."""
    if name.startswith(SCALE_PREFIX):
        values = np.asarray(arr, dtype=np.float64)
        if not (np.isfinite(values).all() and (values >= 0.0).all() and (values <= MAX_SCALE).all()):
            raise QuantizationError(f"scale {name!r} must be finite and lie in [0, {MAX_SCALE:g}]")
    elif arr.dtype == np.int8 and arr.size and int(arr.min()) < -QMAX:
        raise QuantizationError(f"int8 tensor {name!r} uses -128, outside the symmetric range [-127, 127]")


def decode(tensors: Mapping[str, np.ndarray], encoding: Encoding, expected: TensorSpec) -> dict[str, np.ndarray]:
    """Validate a decoded body against the round's F32 update spec and return the F32 deltas.

    Raises TensorSpecError for names, dtypes or shapes other than `wire_spec(expected, encoding)`,
    QuantizationError for out-of-range int8 tensors or scales. Finiteness of float tensors is
    checked at intake, as for float32 updates."""
    check_spec(spec_of(tensors), wire_spec(expected, encoding))
    if encoding == "float32":
        return dict(tensors)
    out: dict[str, np.ndarray] = {}
    for name in expected:
        arr = tensors[name]
        if not is_compressed(name):
            out[name] = arr
        elif encoding == "float16":
            out[name] = arr.astype(np.float32)
        else:
            scale = tensors[scale_name(name)]
            check_tensor(scale_name(name), scale)
            check_tensor(name, arr)
            out[name] = dequantize(arr, scale)
    return out

