from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from fedface_common.face.checkpoint import load_class_centres, load_model, save_model
from fedface_common.face.manifest import ModelManifest
from fedface_lab.datasets import CropCache
from fedface_lab.embed import embed_paths
from fedface_lab.evaluate import evaluate_model
from fedface_lab.pretrain import PretrainConfig, pretrain


def test_tiny_pretrain_runs_and_resumes(data: Path, tmp_path: Path) -> None:
    cfg = PretrainConfig(
        data=data / "cfp", out=tmp_path / "tiny.safetensors", input_size=32, width=0.25, embedding_dim=64,
        epochs=1, batch_size=14, lr=0.05, max_identities=3, progress=False, cache_dir=tmp_path / "cache",
        threads=2,
    )
    first = pretrain(cfg)
    assert cfg.out.exists() and len(first.history) == 1
    assert np.isfinite(first.history[0]["loss"])
    ckpt = cfg.resolved_checkpoint_dir()
    assert json.loads((ckpt / "latest.json").read_text())["epoch"] == 1

    cfg.epochs = 2
    second = pretrain(cfg)  # resumes: trains epoch 2 only
    assert len(second.history) == 2 and second.history[0] == first.history[0]
    assert json.loads((ckpt / "latest.json").read_text())["epoch"] == 2
    assert [p.name for p in ckpt.glob("epoch-*.safetensors")] == ["epoch-0002.safetensors"]

    _, manifest = load_model(cfg.out)
    assert (manifest.input_size, manifest.embedding_dim) == (32, 64)
    assert load_class_centres(cfg.out).shape == (3, 64)


def test_embed_four_lfw_images(data: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    manifest = ModelManifest(width=0.25, input_size=32, embedding_dim=64)
    path = save_model(tmp_path / "m.safetensors", manifest.build().eval(), manifest)
    model, manifest = load_model(path)
    rel = [f"Abel_Pacheco/Abel_Pacheco_000{i}.jpg" for i in (1, 2, 3, 4)]
    for flip in (False, True):
        emb = embed_paths(model, manifest, data / "lfw" / "lfw-deepfunneled", rel, flip=flip,
                          cache=CropCache(tmp_path / "cache"), progress=False)
        assert emb.shape == (4, 64) and emb.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)


def test_evaluate_on_a_slice(data: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    manifest = ModelManifest(width=0.25, input_size=32, embedding_dim=64)
    path = save_model(tmp_path / "m.safetensors", manifest.build().eval(), manifest)
    lines = (data / "protocol" / "dev_pairs.txt").read_text().splitlines()
    # 2 folds of 3 same + 3 different pairs, taken from the real file's two folds.
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("\n".join(["2\t3", *lines[1:4], *lines[301:304], *lines[601:604], *lines[901:904]]) + "\n")
    images = tmp_path / "images.txt"
    images.write_text("\n".join((data / "protocol" / "dev_images.txt").read_text().splitlines()[:12]) + "\n")
    r = evaluate_model(path, data / "lfw" / "lfw-deepfunneled", pairs, images, roc_png=tmp_path / "roc.png",
                       cache_dir=tmp_path / "cache", progress=False)
    assert r["pairs"]["n"] == 12 and 0.0 <= r["pairs"]["accuracy"] <= 1.0
    assert r["all_pairs"]["genuine_pairs"] + r["all_pairs"]["impostor_pairs"] == 66
    assert (tmp_path / "roc.png").stat().st_size > 0
