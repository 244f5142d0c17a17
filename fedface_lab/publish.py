"""Turn a pretrained model file into what the coordinator serves: the weights
(without the `pretrain.` extras, which are not trainable parameters) and the
public class centres as a separate blob for `fedface-private`."""

from __future__ import annotations

from pathlib import Path

from fedface_common import tensors
from fedface_common.face.checkpoint import CLASS_CENTRES, EXTRA_PREFIX, load_class_centres


def split_pretrained(model_file: Path, out_dir: Path) -> tuple[Path, Path | None]:
    data = model_file.read_bytes()
    meta = tensors.metadata_of(data)
    arrays = tensors.decode(data)
    weights = {k: v for k, v in arrays.items() if not k.startswith(EXTRA_PREFIX)}
    out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = out_dir / "weights.safetensors"
    weights_path.write_bytes(tensors.encode(weights, meta))
    if CLASS_CENTRES not in arrays:
        return weights_path, None
    centres_path = out_dir / "class-centres.safetensors"
    centres_path.write_bytes(tensors.encode({"class_centres": load_class_centres(model_file)}))
    return weights_path, centres_path
