"""The simulated attacker's update: the same body, its deltas scaled, in any encoding."""

from __future__ import annotations

import numpy as np
import pytest

from fedface_common import update_codec
from fedface_common.tensors import TensorInfo, decode, encode, metadata_of
from fedface_common.wire import CLASS_EMBEDDING_TENSOR
from fedface_lab.attackers import scale_update


@pytest.mark.parametrize("encoding", ["float32", "float16", "int8"])
def test_scaled_update_decodes_to_factor_times_the_deltas(encoding: str) -> None:
    rng = np.random.default_rng(0)
    deltas = {"a": rng.standard_normal((4, 3)).astype(np.float32), "b": rng.standard_normal(5).astype(np.float32)}
    row = rng.standard_normal(8).astype(np.float32)
    wire = {**update_codec.encode(deltas, encoding), CLASS_EMBEDDING_TENSOR: row}  # type: ignore[arg-type]
    body = encode(wire, {"note": "kept"})
    scaled = scale_update(body, 100.0)
    assert metadata_of(scaled)["note"] == "kept"
    spec = {name: TensorInfo("F32", v.shape) for name, v in {**deltas, CLASS_EMBEDDING_TENSOR: row}.items()}
    before = update_codec.decode(decode(body), encoding, spec)  # type: ignore[arg-type]
    after = update_codec.decode(decode(scaled), encoding, spec)  # type: ignore[arg-type]
    for name in deltas:
        np.testing.assert_allclose(after[name], before[name] * 100, rtol=2e-3)
    np.testing.assert_array_equal(after[CLASS_EMBEDDING_TENSOR], row)


def test_a_huge_factor_saturates_instead_of_overflowing() -> None:
    body = encode({"a": np.array([1e38, -1e38], dtype=np.float32)})
    out = decode(scale_update(body, 1e6))["a"]
    assert np.isfinite(out).all() and out[0] == np.finfo(np.float32).max
