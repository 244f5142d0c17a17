"""Receiving request bodies into the blob store without buffering them whole.

The size limit is enforced twice: against Content-Length before a byte is
read, and while streaming (a chunked body has no Content-Length)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import numpy as np
from safetensors import safe_open

from coordinator.errors import (
    FedFaceError,
    InvalidTensors,
    NonFiniteValues,
    PayloadTooLarge,
    TensorSpecMismatch,
)
from coordinator.services.headers import declared_length
from coordinator.strategies.robust import class_embedding_norm, update_norm
from fedface_common import update_codec
from fedface_common.tensors import (
    TensorFormatError,
    TensorSpec,
    TensorSpecError,
    check_spec,
    header_length,
    parse_header,
)
from fedface_common.text import control_character
from fedface_common.update_codec import Encoding
from storage.blobs import BlobStore, BlobWriter

# A further check of one decoded tensor (name, values); it raises a FedFaceError to refuse the body.
TensorCheck = Callable[[str, np.ndarray], None]


async def receive(
    body: AsyncIterator[bytes], content_length: str | None, limit: int, blobs: BlobStore
) -> BlobWriter:
    """Stage a body in the blob store; the caller commits or aborts the writer."""
    declared_length(content_length, limit)
    writer = blobs.writer()
    try:
        async for chunk in body:
            if writer.size + len(chunk) > limit:
                raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes", limit=limit)
            await writer.write(chunk)
        await writer.finish()
    except BaseException:
        await writer.abort()
        raise
    return writer


def _read_staged_header(writer: BlobWriter) -> tuple[TensorSpec, dict[str, str]]:
    with writer.staged_path().open("rb") as f:
        prefix = f.read(8)
        try:
            n = header_length(prefix, writer.size)
            spec, metadata = parse_header(prefix + f.read(n), writer.size)
        except TensorFormatError as exc:
            raise InvalidTensors(str(exc)) from exc
    # Tensor names are stored (a model's tensor spec), so they obey the rule for stored text.
    for name in spec:
        found = control_character(name)
        if found is not None:
            raise InvalidTensors(f"a tensor name holds a control character ({found})")
    return spec, metadata


def validate_staged(writer: BlobWriter, expected: TensorSpec | None,
                    check: TensorCheck | None = None) -> tuple[TensorSpec, dict[str, str]]:
    """Check a staged safetensors body: header shape, expected spec, finiteness, then `check` per tensor.

    Runs in a worker thread. Tensors are read one at a time through
    safetensors' memory map, so memory stays O(largest tensor)."""
    spec, metadata = _read_staged_header(writer)
    if expected is not None:
        try:
            check_spec(spec, expected)
        except TensorSpecError as exc:
            raise TensorSpecMismatch(str(exc)) from exc
    try:
        with safe_open(str(writer.staged_path()), framework="numpy") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a Mapping)
                arr = f.get_tensor(name)
                if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                    raise NonFiniteValues(f"tensor {name!r} contains NaN or Inf")
                if check is not None:
                    check(name, arr)
    except FedFaceError:
        raise
    except Exception as exc:  # safetensors' own errors for inconsistent files
        raise InvalidTensors(f"safetensors body could not be decoded: {exc}") from exc
    return spec, metadata


async def validate_staged_async(writer: BlobWriter, expected: TensorSpec | None,
                                check: TensorCheck | None = None) -> tuple[TensorSpec, dict[str, str]]:
    return await asyncio.to_thread(validate_staged, writer, expected, check)


def measure_staged(writer: BlobWriter, encoding: Encoding, expected: TensorSpec) -> UpdateMeasure:
    """Decode a validated body to its F32 deltas and measure them (in a worker thread; O(model) memory)."""
    with safe_open(str(writer.staged_path()), framework="numpy") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    update = update_codec.decode(tensors, encoding, expected)
    return UpdateMeasure(delta_norm=update_norm(update), class_embedding_norm=class_embedding_norm(update))


@dataclass(frozen=True)
class UpdateMeasure:
    delta_norm: float
    class_embedding_norm: float | None
