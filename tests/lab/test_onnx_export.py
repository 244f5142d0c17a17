"""`fedface export --format onnx`: onnxruntime reproduces torch on real LFW face crops for both
architectures, at any batch size, and the manifest travels in the ONNX metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fedface_cli.main import app
from fedface_common.face.checkpoint import load_model, save_model
from fedface_common.face.manifest import ModelManifest
from fedface_common.face.preprocess import batch_to_tensor
from fedface_common.wire import MANIFEST_METADATA_KEY
from fedface_lab.model_cache import face_api_model_path
from fedface_lab.onnx_export import ExportError, check_onnx, to_onnx_bytes
from fedface_lab.verify import face_crops

PHOTOS = ("Abel_Pacheco/Abel_Pacheco_0001.jpg", "Akhmed_Zakayev/Akhmed_Zakayev_0003.jpg",
          "Abdullah_Gul/Abdullah_Gul_0001.jpg")


@pytest.fixture
def photos(data_root: Path) -> list[Path]:
    torch.set_num_threads(1)
    return [data_root / "lfw" / "lfw-deepfunneled" / p for p in PHOTOS]


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    manifest = ModelManifest(width=0.25, input_size=32, embedding_dim=16, thresholds={"0.001": 0.5})
    return save_model(tmp_path / "tiny.safetensors", manifest.build().eval(), manifest)


def _dlib_model() -> Path:
    path = face_api_model_path()
    if not path.is_file():
        pytest.skip(f"dlib's network is not at {path}: `make install` (or `fedface models import face-api`)")
    return path


def _export_and_compare(model_path: Path, photos: list[Path], out: Path) -> None:
    args = ["export", "--model", str(model_path), "--format", "onnx", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, *(a for p in photos for a in ("--photo", str(p)))])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["max_abs_diff"] <= 1e-4

    model, manifest = load_model(model_path)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert ModelManifest.from_json(meta[MANIFEST_METADATA_KEY]) == manifest

    inp, outp = session.get_inputs()[0], session.get_outputs()[0]
    assert inp.shape[1:] == [3, manifest.input_size, manifest.input_size] and isinstance(inp.shape[0], str)
    assert outp.shape[1] == manifest.embedding_dim
    x = batch_to_tensor([f.crop for f in face_crops(photos, manifest)], manifest)
    with torch.inference_mode():
        expected = model(x).numpy()
    for batch in (x, x[:1]):  # the batch axis is dynamic
        got = session.run(None, {inp.name: batch.numpy()})[0]
        assert got.shape == (len(batch), manifest.embedding_dim)
        np.testing.assert_allclose(got, expected[: len(batch)], rtol=0, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(expected, axis=1), 1.0, rtol=1e-5)


def test_dlib_network_exports(photos: list[Path], tmp_path: Path) -> None:
    _export_and_compare(_dlib_model(), photos, tmp_path / "dlib.onnx")


def test_mobilefacenet_exports(tiny_model: Path, photos: list[Path], tmp_path: Path) -> None:
    _export_and_compare(tiny_model, photos, tmp_path / "tiny.onnx")


def test_the_check_fails_when_the_export_does_not_match(tiny_model: Path, photos: list[Path]) -> None:
    model, manifest = load_model(tiny_model)
    crops = [f.crop for f in face_crops(photos, manifest)]
    data = to_onnx_bytes(model, manifest)
    assert check_onnx(data, model, manifest, crops) <= 1e-4
    torch.manual_seed(1)
    other = manifest.build().eval()  # other weights: the same graph must not pass as this model
    with pytest.raises(ExportError, match="differs from torch"):
        check_onnx(data, other, manifest, crops)
    with pytest.raises(ExportError, match="manifest"):
        check_onnx(data, model, manifest.model_copy(update={"thresholds": {}}), crops)


def test_other_formats_are_refused(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.tflite"
    result = CliRunner().invoke(app, ["export", "--model", str(tiny_model), "--format", "tflite", "--out", str(out)])
    assert result.exit_code == 2 and "unknown format 'tflite'" in result.stderr and "onnx" in result.stderr
    assert not out.exists()


def test_a_photo_without_a_face_stops_the_export(tiny_model: Path, tmp_path: Path) -> None:
    grey = tmp_path / "grey.png"
    Image.new("RGB", (200, 200), (128, 128, 128)).save(grey)
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(app, ["export", "--model", str(tiny_model), "--out", str(out), "--photo", str(grey)])
    assert result.exit_code == 2 and f"photo {grey}: no face found" in result.stderr
    assert not out.exists()
