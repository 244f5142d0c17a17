"""The face-api import: the port is exact (against dlib itself and against the package's own graph),
and every kind of bad package is a clear error that writes nothing."""

from __future__ import annotations

import importlib.util
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from fedface_cli.main import app
from fedface_common.face import face_api
from fedface_common.face.checkpoint import load_model
from fedface_common.face.face_api import PackageError, dequantize, import_face_api, read_package
from fedface_common.face.preprocess import batch_to_tensor
from fedface_common.face.resnet29 import DlibResNet29
from fedface_lab.datasets import CropCache, load_crop
from fedface_lab.model_cache import face_api_package_path

PORT_COSINE = 0.999


@pytest.fixture(scope="module")
def package() -> Path:
    path = face_api_package_path()
    if not path.is_file():
        pytest.skip(f"the face-api package is not at {path}: `make install` (or `fedface models fetch face-api`)")
    return path


@pytest.fixture(scope="module")
def unpacked(package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("face-api")
    with tarfile.open(package) as tar:
        for name in (face_api.WEIGHTS_FILE, face_api.MANIFEST_FILE, face_api.LICENCE_FILE):
            member = tar.getmember(f"package/{name}")
            handle = tar.extractfile(member)
            assert handle is not None
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(handle.read())
    return root


@pytest.fixture(scope="module")
def imported(package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return import_face_api(package, tmp_path_factory.mktemp("model") / "resnet.safetensors")


def _copy(unpacked: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(unpacked, target)
    return target


def _crops(data_root: Path, tmp_path: Path, count: int = 8) -> list:
    lfw = data_root / "lfw" / "lfw-deepfunneled"
    people = ["Tony_Blair", "George_W_Bush", "Colin_Powell", "Gerhard_Schroeder"]
    paths = [p for name in people for p in sorted((lfw / name).glob("*.jpg"))[:2]][:count]
    return [load_crop(p, "detect", 150, CropCache(tmp_path / "cache"), alignment="5pt-dlib") for p in paths]


def test_the_import_writes_a_model_that_says_what_it_is(imported: Path) -> None:
    model, manifest = load_model(imported)
    assert manifest.architecture == "dlib-resnet29" and manifest.alignment == "5pt-dlib"
    assert manifest.input_size == 150 and manifest.embedding_dim == 128
    assert "public domain" in manifest.notes["licence"] and "MIT License" in manifest.notes["licence"]
    assert manifest.notes["source"] == f"{face_api.PACKAGE}@{face_api.VERSION} {face_api.WEIGHTS_FILE}"
    assert sum(p.numel() for p in model.parameters()) == 5_607_488


def _reference_descriptor(weights: dict[str, np.ndarray], x: torch.Tensor) -> torch.Tensor:
    """The package's graph (src/faceRecognitionNet) step by step, with conv, bias and scale kept apart."""

    def conv(t: torch.Tensor, prefix: str, stride: int, relu: bool) -> torch.Tensor:
        w = torch.from_numpy(weights[f"{prefix}/conv/filters"]).permute(3, 2, 0, 1)
        out = F.conv2d(t, w, torch.from_numpy(weights[f"{prefix}/conv/bias"]), stride, 0 if stride == 2 else 1)
        scale = torch.from_numpy(weights[f"{prefix}/scale/weights"]).view(1, -1, 1, 1)
        out = out * scale + torch.from_numpy(weights[f"{prefix}/scale/biases"]).view(1, -1, 1, 1)
        return F.relu(out) if relu else out

    def residual(t: torch.Tensor, prefix: str, down: bool) -> torch.Tensor:
        out = conv(conv(t, f"{prefix}/conv1", 2 if down else 1, True), f"{prefix}/conv2", 1, False)
        if not down:
            return F.relu(out + t)
        pooled = F.avg_pool2d(t, 2, 2)
        if pooled.shape[-1] != out.shape[-1]:
            out = F.pad(out, (0, 1, 0, 1))
        if pooled.shape[1] != out.shape[1]:
            pooled = torch.cat([pooled, torch.zeros_like(pooled)], dim=1)
        return F.relu(pooled + out)

    out = F.max_pool2d(conv(x, "conv32_down", 2, True), 3, 2)
    for prefix in ("conv32_1", "conv32_2", "conv32_3"):
        out = residual(out, prefix, False)
    for stage, rest in (("conv64", 3), ("conv128", 2), ("conv256", 2)):
        out = residual(out, f"{stage}_down", True)
        for i in range(1, rest + 1):
            out = residual(out, f"{stage}_{i}", False)
    out = residual(out, "conv256_down_out", True)
    return out.mean(dim=(2, 3)) @ torch.from_numpy(weights["fc"])


def test_folded_model_equals_the_packages_own_graph(package: Path, imported: Path) -> None:
    files = read_package(package)
    weights = dequantize(files.manifest, files.weights)
    model, _ = load_model(imported)
    assert isinstance(model, DlibResNet29)
    x = torch.randn(3, 3, 150, 150, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, reference = model.features(x), _reference_descriptor(weights, x)
    np.testing.assert_allclose(ours.numpy(), reference.numpy(), rtol=1e-4, atol=1e-5)


def _dlib_model_file() -> Path:
    """dlib's own float model, as PyPI's face-recognition-models ships it (found without importing
    the package, whose __init__ needs pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the reference is not installed: pip install face-recognition-models (CC0 weights)")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / "dlib_face_recognition_resnet_model_v1.dat"
    if not path.is_file():
        pytest.skip(f"face-recognition-models has no {path.name}")
    return path


def test_port_matches_dlib_on_aligned_photos(imported: Path, data_root: Path, tmp_path: Path) -> None:
    dlib = pytest.importorskip("dlib", reason="the reference is not installed: pip install dlib-bin")
    reference = dlib.face_recognition_model_v1(str(_dlib_model_file()))
    model, manifest = load_model(imported)
    assert isinstance(model, DlibResNet29)
    crops = _crops(data_root, tmp_path)
    with torch.no_grad():
        ours = model.features(batch_to_tensor(crops, manifest)).double().numpy()
    theirs = np.array([np.array(reference.compute_face_descriptor(np.asarray(c))) for c in crops])
    cosine = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    assert cosine.min() >= PORT_COSINE, cosine
    # The descriptors are dlib's, not unit length: the same scale too, within the uint8 storage.
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), np.linalg.norm(theirs, axis=1), rtol=0.01)


def _expect_refusal(source: Path, tmp_path: Path, match: str, pinned: bool = True) -> None:
    out = tmp_path / "out" / "model.safetensors"
    with pytest.raises(PackageError, match=match):
        import_face_api(source, out, pinned=pinned)
    assert not out.exists() and not out.parent.exists()


def test_a_tarball_with_another_checksum_is_refused(package: Path, tmp_path: Path) -> None:
    raw = bytearray(package.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    bad = tmp_path / "face-api.tgz"
    bad.write_bytes(bytes(raw))
    _expect_refusal(bad, tmp_path, "SHA-256 .* is not")


def test_an_unpacked_copy_with_other_weights_is_refused_when_pinned(unpacked: Path, tmp_path: Path) -> None:
    copy = _copy(unpacked, tmp_path)
    weights = copy / face_api.WEIGHTS_FILE
    raw = bytearray(weights.read_bytes())
    raw[0] ^= 1
    weights.write_bytes(bytes(raw))
    _expect_refusal(copy, tmp_path, "face_recognition_model.bin: SHA-256")


def test_the_pinned_unpacked_copy_imports(unpacked: Path, tmp_path: Path) -> None:
    out = import_face_api(unpacked, tmp_path / "m.safetensors")
    assert load_model(out)[1].architecture == "dlib-resnet29"


def test_a_truncated_weights_file_is_refused(unpacked: Path, tmp_path: Path) -> None:
    copy = _copy(unpacked, tmp_path)
    weights = copy / face_api.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-1000])
    _expect_refusal(copy, tmp_path, "truncated", pinned=False)


def test_trailing_bytes_are_refused(unpacked: Path, tmp_path: Path) -> None:
    copy = _copy(unpacked, tmp_path)
    weights = copy / face_api.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes() + b"\0" * 16)
    _expect_refusal(copy, tmp_path, "16 bytes the manifest does not account for", pinned=False)


def _edit_manifest(copy: Path, edit: object) -> None:
    path = copy / face_api.MANIFEST_FILE
    groups = json.loads(path.read_text())
    edit(groups[0]["weights"])  # type: ignore[operator]
    path.write_text(json.dumps(groups))


def test_a_manifest_whose_shapes_do_not_fit_the_architecture_is_refused(unpacked: Path, tmp_path: Path) -> None:
    copy = _copy(unpacked, tmp_path)

    def transpose_fc(weights: list[dict]) -> None:
        (fc,) = [w for w in weights if w["name"] == "fc"]
        fc["shape"] = [128, 256]  # same byte count, wrong layout

    _edit_manifest(copy, transpose_fc)
    _expect_refusal(copy, tmp_path, r"fc: shape \(128, 256\), the architecture needs \(256, 128\)", pinned=False)


def test_a_manifest_with_a_tensor_the_architecture_lacks_is_refused(unpacked: Path, tmp_path: Path) -> None:
    copy = _copy(unpacked, tmp_path)

    def rename(weights: list[dict]) -> None:
        weights[-1]["name"] = "fc_renamed"

    _edit_manifest(copy, rename)
    _expect_refusal(copy, tmp_path, "the weights manifest has no fc", pinned=False)


def test_non_finite_weights_are_refused(unpacked: Path, tmp_path: Path) -> None:
    copy = _copy(unpacked, tmp_path)
    files = read_package(copy)
    specs = json.loads(files.manifest)[0]["weights"]
    offset = 0
    for spec in specs:  # the first float32 tensor's first value becomes NaN
        count = int(np.prod(spec["shape"]))
        if "quantization" not in spec:
            break
        offset += count
    raw = bytearray(files.weights)
    raw[offset:offset + 4] = np.array([np.nan], dtype="<f4").tobytes()
    (copy / face_api.WEIGHTS_FILE).write_bytes(bytes(raw))
    _expect_refusal(copy, tmp_path, "not finite", pinned=False)


def test_the_cli_says_what_is_wrong_and_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-package.tgz"
    bad.write_bytes(b"hello")
    out = tmp_path / "m.safetensors"
    result = CliRunner().invoke(app, ["models", "import", "face-api", "--package", str(bad), "--out", str(out),
                                      "--unpinned"])
    assert result.exit_code == 2
    assert "not a readable npm tarball" in result.output and "nothing written" in result.output
    assert not out.exists()
    result = CliRunner().invoke(app, ["models", "import", "other-source", "--out", str(out)])
    assert result.exit_code != 0 and not out.exists()
