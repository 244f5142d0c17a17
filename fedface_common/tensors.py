"""Safetensors codec and validation of tensors against a manifest.

Nothing here unpickles: safetensors is a JSON header plus raw little-endian
buffers, so a hostile body can at worst fail validation."""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load, save

# safetensors dtype names, restricted to what a model or an update may carry.
_DTYPES: dict[str, np.dtype] = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "F64": np.dtype("<f8"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    # The int8 encoding of update deltas (fedface_common.update_codec).
    "I8": np.dtype("i1"),
    # A secure-aggregation round's masked input: fixed point mod 2^32 (fedface_common.secagg).
    "U32": np.dtype("<u4"),
}
_NAME_OF = {v: k for k, v in _DTYPES.items()}
MAX_HEADER_BYTES = 16 * 1024 * 1024


class TensorFormatError(ValueError):
    """The bytes are not a well-formed safetensors file."""


class TensorSpecError(ValueError):
    """Well-formed tensors that do not match what was expected."""


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, object]:
        return {"dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, raw: Mapping[str, object]) -> TensorInfo:
        shape = raw["shape"]
        assert isinstance(shape, list)
        return cls(dtype=str(raw["dtype"]), shape=tuple(int(x) for x in shape))

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


TensorSpec = dict[str, TensorInfo]


def spec_of(tensors: Mapping[str, np.ndarray]) -> TensorSpec:
    return {name: TensorInfo(_NAME_OF[np.dtype(a.dtype).newbyteorder("<")], tuple(a.shape))
            for name, a in tensors.items()}


def spec_to_json(spec: TensorSpec) -> dict[str, dict[str, object]]:
    return {name: info.to_json() for name, info in sorted(spec.items())}


def spec_from_json(raw: Mapping[str, Mapping[str, object]]) -> TensorSpec:
    return {name: TensorInfo.from_json(info) for name, info in raw.items()}


def encode(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    contiguous = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    return save(contiguous, metadata=dict(metadata) if metadata else None)


def header_length(prefix: bytes | memoryview, total_size: int) -> int:
    """Length of the JSON header announced by the first 8 bytes, range-checked."""
    if len(prefix) < 8 or total_size < 8:
        raise TensorFormatError("body is shorter than a safetensors header")
    (n,) = struct.unpack("<Q", bytes(prefix[:8]))
    if n > MAX_HEADER_BYTES or 8 + n > total_size:
        raise TensorFormatError("safetensors header length is out of range")
    return int(n)


def parse_header(head: bytes | memoryview, total_size: int) -> tuple[TensorSpec, dict[str, str]]:
    """Parse and check a safetensors header without touching tensor bytes.

    `head` is the 8-byte length plus the JSON header; `total_size` is the size
    of the whole body, so offsets are checked against it and a body can be
    refused before its tensors are decoded."""
    header_len = header_length(head, total_size)
    if len(head) < 8 + header_len:
        raise TensorFormatError("safetensors header is truncated")
    try:
        header = json.loads(bytes(head[8 : 8 + header_len]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TensorFormatError("safetensors header is not JSON") from exc
    if not isinstance(header, dict):
        raise TensorFormatError("safetensors header is not a JSON object")
    metadata_raw = header.pop("__metadata__", None) or {}
    if not isinstance(metadata_raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata_raw.items()
    ):
        raise TensorFormatError("safetensors metadata must map strings to strings")
    spec: TensorSpec = {}
    end = 0
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise TensorFormatError(f"tensor {name!r} has a malformed header entry")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in _DTYPES:
            raise TensorFormatError(f"tensor {name!r} has unsupported dtype {dtype!r}")
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise TensorFormatError(f"tensor {name!r} has a malformed shape")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise TensorFormatError(f"tensor {name!r} has malformed offsets")
        info = TensorInfo(dtype, tuple(shape))
        if offsets[0] < 0 or offsets[1] - offsets[0] != info.numel * _DTYPES[dtype].itemsize:
            raise TensorFormatError(f"tensor {name!r} offsets do not match its shape")
        end = max(end, offsets[1])
        spec[name] = info
    if 8 + header_len + end != total_size:
        raise TensorFormatError("safetensors body length does not match its header")
    return spec, metadata_raw


def read_header(data: bytes | memoryview) -> tuple[TensorSpec, dict[str, str]]:
    return parse_header(data, len(data))


def check_spec(actual: TensorSpec, expected: TensorSpec) -> None:
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    if missing or extra:
        raise TensorSpecError(f"tensor names differ from the manifest: missing {missing[:5]}, unexpected {extra[:5]}")
    for name, info in expected.items():
        got = actual[name]
        if got.dtype != info.dtype:
            raise TensorSpecError(f"tensor {name!r} has dtype {got.dtype}, expected {info.dtype}")
        if got.shape != info.shape:
            raise TensorSpecError(f"tensor {name!r} has shape {list(got.shape)}, expected {list(info.shape)}")


def decode(data: bytes, expected: TensorSpec | None = None, require_finite: bool = True) -> dict[str, np.ndarray]:
    """Validate then decode a safetensors body."""
    spec, _ = read_header(data)
    if expected is not None:
        check_spec(spec, expected)
    try:
        tensors = load(data)
    except Exception as exc:  # safetensors raises its own error types
        raise TensorFormatError(f"safetensors body could not be decoded: {exc}") from exc
    if require_finite:
        for name, arr in tensors.items():
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise TensorSpecError(f"tensor {name!r} contains NaN or Inf")
    return tensors


def load_file(path: Path, expected: TensorSpec | None = None) -> dict[str, np.ndarray]:
    return decode(path.read_bytes(), expected)


def metadata_of(data: bytes) -> dict[str, str]:
    return read_header(data)[1]
