"""Turn a pretrained model file into what the coordinator serves: the weights
without the `pretrain.` extras (they are not trainable parameters, and devices
would otherwise send deltas for them) and the public class centres as their
own blob, which `fedface-private` ships to devices.

numpy and safetensors only: `fedface admin` uses this where torch is absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedface_common import tensors
from fedface_common.wire import CLASS_CENTRES_TENSOR, PRETRAIN_CLASS_CENTRES, PRETRAIN_EXTRA_PREFIX


def has_extras(model_file: Path) -> bool:
    spec, _ = tensors.read_header(model_file.read_bytes())
    return any(name.startswith(PRETRAIN_EXTRA_PREFIX) for name in spec)


def split_pretrained(model_file: Path, out_dir: Path) -> tuple[Path, Path | None]:
    """(weights file, class-centres file or None), written into `out_dir`."""
    data = model_file.read_bytes()
    meta = tensors.metadata_of(data)
    arrays = tensors.decode(data)
    weights = {k: v for k, v in arrays.items() if not k.startswith(PRETRAIN_EXTRA_PREFIX)}
    out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = out_dir / f"{model_file.stem}.weights.safetensors"
    weights_path.write_bytes(tensors.encode(weights, meta))
    if PRETRAIN_CLASS_CENTRES not in arrays:
        return weights_path, None
    w = arrays[PRETRAIN_CLASS_CENTRES].astype(np.float32)
    centres = w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
    centres_path = out_dir / f"{model_file.stem}.class-centres.safetensors"
    centres_path.write_bytes(tensors.encode({CLASS_CENTRES_TENSOR: centres}))
    return weights_path, centres_path
