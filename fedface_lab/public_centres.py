"""Public class centres for a network that came without them.

`fedface-private` needs the class centres of the operator's public identities
as negatives (device_agent/algorithms.py). A network pretrained here keeps its
margin-softmax rows; an imported one (dlib's) has none, so its centres are the
normalised mean embeddings of each public identity's photos (all of CFP, frontal
and profile, aligned with the fiducials to the network's template): the same
role, measured in the network's own embedding space."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fedface_common.face.checkpoint import CLASS_CENTRES, load_model, save_model
from fedface_common.face.preprocess import normalise_uint8
from fedface_lab.datasets import CropCache, list_cfp, load_cfp_crops


@torch.inference_mode()
def attach_public_centres(model_path: Path, cfp_root: Path, out: Path, batch_size: int = 128,
                          max_identities: int | None = None) -> Path:
    model, manifest = load_model(model_path)
    items = list_cfp(cfp_root, max_identities)
    if not items:
        raise ValueError(f"no CFP photos under {cfp_root}")
    crops = torch.from_numpy(load_cfp_crops(items, manifest.input_size, CropCache(), alignment=manifest.alignment))
    identities = sorted({item.identity for item in items})
    index = {name: i for i, name in enumerate(identities)}
    labels = torch.tensor([index[item.identity] for item in items])
    sums = torch.zeros(len(identities), manifest.embedding_dim)
    for start in range(0, len(crops), batch_size):
        emb = model(normalise_uint8(crops[start:start + batch_size], manifest))
        sums.index_add_(0, labels[start:start + batch_size], emb)
    centres = torch.nn.functional.normalize(sums, dim=1).numpy().astype(np.float32)
    manifest = manifest.model_copy(update={"notes": {
        **manifest.notes, "class_centres": f"mean embedding of each of {len(identities)} CFP identities "
                                           f"({len(items)} photos)"}})
    return save_model(out, model, manifest, {CLASS_CENTRES: centres})
