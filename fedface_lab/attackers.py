"""Simulated hostile devices: they train like everyone else, then send their update scaled.

A device's client is the only thing that differs, so an attacker runs the agent's own code path up to
the upload. What the coordinator receives is a well-formed update of the round's encoding whose deltas
are `factor` times what the device trained (in int8 rounds the per-tensor scales carry the factor)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from device_agent.client import DeviceClient
from fedface_common.tensors import decode, encode, metadata_of
from fedface_common.update_codec import scale_name
from fedface_common.wire import CLASS_EMBEDDING_TENSOR, SubmitResponse


def scale_update(body: bytes, factor: float) -> bytes:
    """The same update with its deltas times `factor` (class embedding and integer tensors unchanged)."""
    tensors = decode(body, require_finite=False)
    limit = np.finfo(np.float32).max
    out: dict[str, np.ndarray] = {}
    for name, values in tensors.items():
        quantised = scale_name(name) in tensors  # its scale tensor carries the factor
        if name == CLASS_EMBEDDING_TENSOR or values.dtype.kind != "f" or quantised:
            out[name] = values
        else:
            scaled = np.clip(values.astype(np.float64) * factor, -limit, limit)
            out[name] = scaled.astype(values.dtype)
    return encode(out, metadata_of(body))


class ScaledUpdateClient(DeviceClient):
    """A device client that multiplies every update it submits by `factor`."""

    def __init__(self, *args: Any, factor: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.factor = factor

    def submit(self, round_id: int, body: bytes, num_samples: int, base_version: int,
               metrics: Mapping[str, Any] | None = None) -> SubmitResponse:
        return super().submit(round_id, scale_update(body, self.factor), num_samples, base_version, metrics)
