from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fedface_common import tensors
from fedface_common.face.publish import has_extras, split_pretrained
from fedface_common.wire import CLASS_CENTRES_TENSOR, MANIFEST_METADATA_KEY, PRETRAIN_CLASS_CENTRES


def test_split_moves_class_centres_out_of_the_served_weights(tmp_path: Path) -> None:
    meta = {MANIFEST_METADATA_KEY: json.dumps({"architecture": "x", "embedding_dim": 2})}
    src = tmp_path / "m.safetensors"
    src.write_bytes(tensors.encode({"w": np.ones(3, np.float32),
                                    PRETRAIN_CLASS_CENTRES: np.array([[3.0, 4.0], [0.0, 2.0]], np.float32)}, meta))
    assert has_extras(src)
    weights, centres = split_pretrained(src, tmp_path / "out")
    assert set(tensors.decode(weights.read_bytes())) == {"w"}
    assert tensors.metadata_of(weights.read_bytes()) == meta
    assert centres is not None and not has_extras(weights)
    np.testing.assert_allclose(tensors.decode(centres.read_bytes())[CLASS_CENTRES_TENSOR], [[0.6, 0.8], [0.0, 1.0]])


def test_a_plain_model_has_no_centres(tmp_path: Path) -> None:
    src = tmp_path / "m.safetensors"
    src.write_bytes(tensors.encode({"w": np.ones(3, np.float32)}))
    assert not has_extras(src)
    assert split_pretrained(src, tmp_path)[1] is None
