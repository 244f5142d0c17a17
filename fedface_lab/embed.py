"""Embeddings of a list of images, in order: float32 (n, d), rows L2-normalised."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from fedface_common.face.checkpoint import load_model
from fedface_common.face.manifest import ModelManifest
from fedface_common.face.preprocess import batch_to_tensor
from fedface_lab.datasets import CropCache, CropMethod, crop_method_for, load_crop, read_image_list
from fedface_lab.progress import make_progress


@torch.inference_mode()
def embed_crops(
    model: nn.Module,
    manifest: ModelManifest,
    crops: Sequence[Image.Image],
    flip: bool = False,
    device: str = "cpu",
) -> np.ndarray:
    """One batch of aligned crops -> (n, d). With `flip`, the embedding of the
    photo and of its mirror image are summed and renormalised (a cheap, common
    test-time augmentation)."""
    model.eval()
    x = batch_to_tensor(crops, manifest).to(device)
    emb = model(x)
    if flip:
        emb = F.normalize(emb + model(x.flip(3)), dim=1)
    return emb.float().cpu().numpy()


def cfp_fiducials_for(image: Path) -> tuple[Path, str]:
    """CFP layout: Images/NNN/<pose>/NN.jpg -> Fiducials/NNN/<pose>/NN.txt."""
    parts = list(image.parts)
    i = len(parts) - 1 - parts[::-1].index("Images")
    parts[i] = "Fiducials"
    return Path(*parts).with_suffix(".txt"), image.parent.name


def embed_paths(
    model: nn.Module,
    manifest: ModelManifest,
    root: str | Path,
    relpaths: Sequence[str],
    crop: CropMethod = "center",
    batch_size: int = 128,
    flip: bool = False,
    cache: CropCache | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> np.ndarray:
    """Embed root/relpath for each relpath, in order. Crops are made (and
    cached) a batch at a time so memory stays flat for long lists."""
    root = Path(root)
    cache = cache or CropCache()
    if crop == "auto":
        crop = crop_method_for(manifest)
    out = np.empty((len(relpaths), manifest.embedding_dim), dtype=np.float32)
    with make_progress(progress) as bar:
        task = bar.add_task("embedding", total=len(relpaths))
        for start in range(0, len(relpaths), batch_size):
            crops = []
            for rel in relpaths[start : start + batch_size]:
                path = root / rel
                fid, pose = cfp_fiducials_for(path) if crop == "cfp" else (None, "frontal")
                crops.append(load_crop(path, crop, manifest.input_size, cache, fid, pose, manifest.alignment))
            out[start : start + len(crops)] = embed_crops(model, manifest, crops, flip, device)
            bar.advance(task, len(crops))
    return out


def embed_list_file(
    model_path: str | Path,
    root: str | Path,
    images_file: str | Path,
    crop: CropMethod = "auto",
    batch_size: int = 128,
    flip: bool = False,
    device: str = "cpu",
    progress: bool = True,
    threads: int | None = None,
) -> np.ndarray:
    """Embeddings of every image of a list file (bare paths or `identity<TAB>path`)."""
    torch.set_num_threads(threads or os.cpu_count() or 1)
    model, manifest = load_model(model_path, device)
    rel = [p for _, p in read_image_list(images_file)]
    return embed_paths(model, manifest, root, rel, crop, batch_size, flip, device=device, progress=progress)
