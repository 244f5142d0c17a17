from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedface_common import tensors
from fedface_common.face.checkpoint import (
    CLASS_CENTRES,
    ModelFileError,
    load_class_centres,
    load_manifest,
    load_model,
    load_numpy_state,
    model_to_numpy,
    save_model,
)
from fedface_common.face.manifest import ModelManifest
from fedface_common.wire import MANIFEST_METADATA_KEY


def _trained_like(manifest: ModelManifest) -> torch.nn.Module:
    torch.manual_seed(1)
    model = manifest.build()
    model.train()
    with torch.no_grad():  # move the BatchNorm running stats away from their init
        model(torch.randn(4, 3, manifest.input_size, manifest.input_size))
    return model.eval()


def test_round_trip_through_safetensors(tmp_path: Path) -> None:
    manifest = ModelManifest(width=0.25, input_size=32, embedding_dim=64, notes={"data": "test"})
    model = _trained_like(manifest)
    centres = np.random.default_rng(0).normal(size=(5, 64)).astype(np.float32) * 3
    path = save_model(tmp_path / "m.safetensors", model, manifest, {CLASS_CENTRES: centres})

    loaded, got = load_model(path)
    assert got == manifest
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))

    raw = path.read_bytes()
    meta = tensors.metadata_of(raw)
    assert json.loads(meta[MANIFEST_METADATA_KEY])["alignment"] == "5pt-arcface"
    names = set(tensors.decode(raw))
    assert names == set(model_to_numpy(model)) | {CLASS_CENTRES}
    assert not any(n.endswith("num_batches_tracked") for n in names)
    assert load_manifest(path) == manifest

    c = load_class_centres(path)
    assert c.shape == (5, 64)
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0, rtol=1e-5)


def test_numpy_state_round_trip_and_mismatch() -> None:
    manifest = ModelManifest(width=0.25, input_size=32)
    a, b = _trained_like(manifest), manifest.build().eval()
    state = model_to_numpy(a)
    assert all(v.dtype == np.float32 for v in state.values())
    load_numpy_state(b, state)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))
    with pytest.raises(ModelFileError, match="missing"):
        load_numpy_state(b, {k: v for k, v in state.items() if k != "project.weight"})
    bad = dict(state)
    bad["project.weight"] = np.zeros((1, 1), np.float32)
    with pytest.raises(ModelFileError, match="shape"):
        load_numpy_state(b, bad)


def test_file_without_manifest_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    path.write_bytes(tensors.encode({"w": np.zeros(3, np.float32)}))
    with pytest.raises(ModelFileError, match="manifest"):
        load_model(path)
