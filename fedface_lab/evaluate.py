"""Development evaluation of a model file: (A) pairs accuracy with the
threshold cross-validated over folds, (B) all-pairs TAR@FAR and AUC."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedface_common.face.checkpoint import load_model
from fedface_lab.datasets import CropCache, CropMethod, read_image_list, read_pairs
from fedface_lab.embed import embed_paths
from fedface_lab.verification import DEFAULT_FARS, all_pairs_verification, kfold_accuracy, pair_scores, plot_roc


def evaluate_model(
    model_path: str | Path,
    data_root: str | Path,
    pairs_file: str | Path | None = None,
    images_file: str | Path | None = None,
    how_to_crop: CropMethod = "auto",
    roc_png: str | Path | None = None,
    flip: bool = False,
    batch_size: int = 128,
    device: str = "cpu",
    cache_dir: str | Path | None = None,
    progress: bool = True,
    threads: int | None = None,
    fars: tuple[float, ...] = DEFAULT_FARS,
) -> dict[str, Any]:
    """Metrics as a JSON-ready dict. `data_root` holds the images the protocol
    files name (for LFW: .../lfw/lfw-deepfunneled)."""
    torch.set_num_threads(threads or os.cpu_count() or 1)
    t0 = time.perf_counter()
    model, manifest = load_model(model_path, device)
    cache = CropCache(cache_dir)
    result: dict[str, Any] = {
        "model": str(model_path), "manifest": manifest.model_dump(mode="json"), "crop": how_to_crop, "flip": flip,
    }

    def embed(paths: list[str]) -> np.ndarray:
        return embed_paths(model, manifest, data_root, paths, how_to_crop, batch_size, flip, cache, device, progress)

    if pairs_file is not None:
        pairs = read_pairs(pairs_file)
        unique = sorted({p.a for p in pairs} | {p.b for p in pairs})
        emb = embed(unique)
        row = {p: i for i, p in enumerate(unique)}
        scores = pair_scores(emb[[row[p.a] for p in pairs]], emb[[row[p.b] for p in pairs]])
        same = np.array([p.same for p in pairs])
        folds = np.array([p.fold for p in pairs])
        result["pairs"] = {"file": str(pairs_file), "n": len(pairs), **kfold_accuracy(scores, same, folds)}
    if images_file is not None:
        items = read_image_list(images_file)
        emb = embed([p for _, p in items])
        verification = all_pairs_verification(emb, [i for i, _ in items], fars)
        result["all_pairs"] = {"file": str(images_file), "images": len(items), **verification.metrics}
        if roc_png is not None:
            label = f"{Path(model_path).stem} (AUC {verification.metrics['auc']:.3f})"
            plot_roc({label: (verification.far, verification.tar)}, roc_png, title=f"ROC: {Path(images_file).name}")
            result["all_pairs"]["roc_png"] = str(roc_png)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result
