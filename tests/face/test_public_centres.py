"""Public class centres for a network without them: one unit row per CFP identity, the normalised
mean of that identity's embeddings, stored where fedface-private's publishing step finds them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fedface_common.face.checkpoint import load_class_centres, load_model, save_model
from fedface_common.face.manifest import ModelManifest
from fedface_common.face.preprocess import normalise_uint8
from fedface_lab.datasets import CropCache, list_cfp, load_cfp_crops
from fedface_lab.public_centres import attach_public_centres


def test_each_centre_is_the_normalised_mean_embedding_of_its_identity(data_root: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    manifest = ModelManifest(width=0.25, input_size=32, embedding_dim=16)
    start = save_model(tmp_path / "start.safetensors", manifest.build().eval(), manifest)
    out = attach_public_centres(start, data_root / "cfp", tmp_path / "with-centres.safetensors", max_identities=3)
    centres = load_class_centres(out)
    assert centres.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), 1.0, rtol=1e-5)

    model, _ = load_model(out)
    items = [i for i in list_cfp(data_root / "cfp", 3) if i.identity == sorted({i.identity for i in list_cfp(
        data_root / "cfp", 3)})[1]]
    crops = torch.from_numpy(load_cfp_crops(items, 32, CropCache(tmp_path / "cache")))
    with torch.no_grad():
        mean = model(normalise_uint8(crops, manifest)).sum(0).numpy()
    np.testing.assert_allclose(centres[1], mean / np.linalg.norm(mean), rtol=1e-4, atol=1e-5)
    # The weights are the start's, unchanged, and the manifest says where the centres came from.
    assert "3 CFP identities" in load_model(out)[1].notes["class_centres"]
    start_model, _ = load_model(start)
    for a, b in zip(start_model.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
