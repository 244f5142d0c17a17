"""Evaluation on the development folds, as the simulator and benchmarks use it:
protocol A (pairs, 2-fold threshold) every few rounds, and A + B at the end,
plus the feature-space collapse monitor: the mean off-diagonal cosine between
the identities' mean features on the development images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedface_common.face.checkpoint import load_model
from fedface_lab.datasets import CropCache, read_image_list
from fedface_lab.embed import embed_paths
from fedface_lab.evaluate import evaluate_model
from fedface_lab.verification import all_pairs_verification


def identity_mean_cosine(embeddings: np.ndarray, identities: list[str]) -> float:
    """Mean cosine between different identities' normalised mean features (1.0 = collapse)."""
    names = sorted(set(identities))
    index = {n: i for i, n in enumerate(names)}
    sums = np.zeros((len(names), embeddings.shape[1]))
    for emb, name in zip(embeddings, identities, strict=True):
        sums[index[name]] += emb
    means = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    s = means.sum(axis=0)
    n = len(names)
    return float((s @ s - (means * means).sum()) / (n * (n - 1)))


class DevEvaluator:
    def __init__(self, data_root: Path, final_round: int, all_pairs_every_eval: bool = False,
                 pairs_file: Path | None = None, images_file: Path | None = None) -> None:
        self.data_root = data_root
        self.lfw = data_root / "lfw" / "lfw-deepfunneled"
        self.pairs = pairs_file or data_root / "protocol" / "dev_pairs.txt"
        self.images = images_file or data_root / "protocol" / "dev_images.txt"
        self.final_round = final_round
        self.all_pairs_every_eval = all_pairs_every_eval

    def __call__(self, model_path: Path, round_index: int) -> dict[str, Any]:
        pairs = evaluate_model(model_path, self.lfw, self.pairs, None, "auto", progress=False)["pairs"]
        out: dict[str, Any] = {"round": round_index, "accuracy": pairs["accuracy"], "accuracy_std": pairs["std"]}
        if self.all_pairs_every_eval or round_index >= self.final_round:
            out.update(self.all_pairs(model_path))
        return out

    def all_pairs(self, model_path: Path) -> dict[str, float]:
        """Protocol B and the feature-collapse monitor from one pass over the images."""
        items = read_image_list(self.images)
        model, manifest = load_model(model_path)
        emb = embed_paths(model, manifest, self.lfw, [p for _, p in items], "auto", 128, False, CropCache(), "cpu",
                          False)
        identities = [i for i, _ in items]
        metrics = dict(all_pairs_verification(emb, identities).metrics)
        metrics["feature_mean_offdiag_cos"] = identity_mean_cosine(emb, identities)
        return metrics
