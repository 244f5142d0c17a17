"""Model files: safetensors with the manifest in the metadata, no pickle.

Tensor names are the module's `state_dict()` names, float32, minus every
BatchNorm `num_batches_tracked` counter: our BatchNorms use a fixed momentum,
so the counter never affects the output, and dropping it keeps a model (and a
federated update) a dict of float tensors that can be averaged.

Extra tensors go in the same file under the `pretrain.` prefix; the one that
pretraining writes is `pretrain.class_centres` (C, d), the rows of the margin
softmax classifier. `load_model` ignores the prefix; `load_class_centres`
reads it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from fedface_common import tensors
from fedface_common.face.manifest import ModelManifest
from fedface_common.wire import MANIFEST_METADATA_KEY, PRETRAIN_CLASS_CENTRES, PRETRAIN_EXTRA_PREFIX

EXTRA_PREFIX = PRETRAIN_EXTRA_PREFIX
CLASS_CENTRES = PRETRAIN_CLASS_CENTRES
_SKIPPED_SUFFIX = "num_batches_tracked"


class ModelFileError(ValueError):
    """The file is not a FedFace model (no manifest, wrong tensors)."""


def model_to_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's state as float32 numpy arrays, keyed by state_dict name."""
    return {
        name: np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32).copy()
        for name, t in model.state_dict().items()
        if not name.endswith(_SKIPPED_SUFFIX)
    }


def load_numpy_state(model: nn.Module, state: Mapping[str, np.ndarray]) -> None:
    """Copy numpy arrays into the model; names and shapes must match exactly
    (num_batches_tracked is neither expected nor accepted)."""
    own = {k: v for k, v in model.state_dict().items() if not k.endswith(_SKIPPED_SUFFIX)}
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise ModelFileError(f"state names differ: missing {missing[:5]}, unexpected {extra[:5]}")
    with torch.no_grad():
        for name, target in own.items():
            arr = np.asarray(state[name])
            if tuple(arr.shape) != tuple(target.shape):
                raise ModelFileError(f"{name}: shape {arr.shape}, expected {tuple(target.shape)}")
            target.copy_(torch.from_numpy(np.ascontiguousarray(arr)).to(target.dtype))


def encode_model(
    model: nn.Module, manifest: ModelManifest, extra_tensors: Mapping[str, np.ndarray] | None = None
) -> bytes:
    """Model file bytes. Extra tensor names get the `pretrain.` prefix unless they have it."""
    body = model_to_numpy(model)
    for name, arr in (extra_tensors or {}).items():
        key = name if name.startswith(EXTRA_PREFIX) else EXTRA_PREFIX + name
        body[key] = np.asarray(arr, dtype=np.float32)
    return tensors.encode(body, {MANIFEST_METADATA_KEY: manifest.to_json()})


class DecodedModel(NamedTuple):
    model: nn.Module
    manifest: ModelManifest
    extras: dict[str, np.ndarray]


def decode_model(data: bytes, device: str = "cpu") -> DecodedModel:
    """Model (in eval mode), manifest and `pretrain.*` tensors from model file bytes."""
    meta = tensors.metadata_of(data)
    if MANIFEST_METADATA_KEY not in meta:
        raise ModelFileError(f"no {MANIFEST_METADATA_KEY!r} in the safetensors metadata")
    manifest = ModelManifest.from_json(meta[MANIFEST_METADATA_KEY])
    arrays = tensors.decode(data)
    extras = {k: v for k, v in arrays.items() if k.startswith(EXTRA_PREFIX)}
    model = manifest.build()
    load_numpy_state(model, {k: v for k, v in arrays.items() if not k.startswith(EXTRA_PREFIX)})
    return DecodedModel(model.to(device).eval(), manifest, extras)


def save_model(
    path: str | Path,
    model: nn.Module,
    manifest: ModelManifest,
    extra_tensors: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Write atomically (temp file + rename) so a reader never sees half a model."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(encode_model(model, manifest, extra_tensors))
    tmp.replace(path)
    return path


def load_model(path: str | Path, device: str = "cpu") -> tuple[nn.Module, ModelManifest]:
    decoded = decode_model(Path(path).read_bytes(), device)
    return decoded.model, decoded.manifest


def load_manifest(path: str | Path) -> ModelManifest:
    meta = tensors.metadata_of(Path(path).read_bytes())
    if MANIFEST_METADATA_KEY not in meta:
        raise ModelFileError(f"no {MANIFEST_METADATA_KEY!r} in {path}")
    return ModelManifest.from_json(meta[MANIFEST_METADATA_KEY])


def load_class_centres(path: str | Path) -> np.ndarray:
    """The pretraining class centres (C, d), float32, each row L2-normalised."""
    arrays = tensors.decode(Path(path).read_bytes())
    if CLASS_CENTRES not in arrays:
        raise ModelFileError(f"{path} has no {CLASS_CENTRES!r} tensor")
    w = arrays[CLASS_CENTRES].astype(np.float32)
    if w.ndim != 2:
        raise ModelFileError(f"{CLASS_CENTRES} must be 2-D, got shape {w.shape}")
    return w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
