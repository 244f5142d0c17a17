"""`fedface models calibrate`: the stored threshold is the lowest one whose false accept rate on the
impostor pairs stays at or below the target, and the model file gets it without its weights changing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedface_cli.main import app
from fedface_common.face.checkpoint import load_class_centres, load_manifest, load_model, model_to_numpy, save_model
from fedface_common.face.manifest import ModelManifest
from fedface_lab.calibrate import calibrate_scores, far_key, threshold_at_far
from fedface_lab.datasets import CropCache, read_image_list
from fedface_lab.embed import embed_paths
from fedface_lab.verification import all_pairs, roc_curve, tar_at_far

SLICE_LINES = 60


def test_threshold_accepts_at_most_floor_far_n_impostors() -> None:
    scores = np.array([0.1, 0.9, 0.5, 0.8, 0.7, 0.3, 0.2, 0.6, 0.4, 0.0])  # 10 distinct impostor scores
    t = threshold_at_far(scores, 0.2)  # 2 of 10 may be accepted (0.9 and 0.8): just above the third, 0.7
    assert 0.7 < t <= 0.7 + 1e-12
    assert (scores >= t).sum() == 2
    assert (scores >= threshold_at_far(scores, 0.25)).sum() == 2  # floor(2.5) = 2: 0.7 stays out
    assert (scores >= threshold_at_far(scores, 0.05)).sum() == 0  # below 1/n: nothing may be accepted


def test_ties_are_never_split() -> None:
    scores = np.array([0.9, 0.9, 0.5, 0.1])
    t = threshold_at_far(scores, 0.25)  # one may be accepted, but the top two are equal: accept neither
    assert (scores >= t).sum() == 0 and t > 0.9


def test_threshold_rejects_bad_far() -> None:
    for far in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError):
            threshold_at_far(np.array([0.1, 0.2]), far)


def test_far_keys_are_canonical() -> None:
    assert far_key(1e-3) == far_key(0.001) == "0.001"
    assert far_key(1e-4) == "0.0001"


def test_tar_agrees_with_the_roc_curve() -> None:
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(0.7, 0.1, 300), rng.normal(0.2, 0.15, 20_000)])
    same = np.r_[np.ones(300, bool), np.zeros(20_000, bool)]
    cal = calibrate_scores(scores, same, [1e-2, 1e-3], "synthetic", 0)
    far, tar, _ = roc_curve(scores, same)
    for f in (1e-2, 1e-3):
        assert cal.tar[far_key(f)] == pytest.approx(tar_at_far(far, tar, f))
        assert cal.far[far_key(f)] <= f


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    manifest = ModelManifest(width=0.25, input_size=32, embedding_dim=16, notes={"source": "test"})
    return save_model(tmp_path / "tiny.safetensors", manifest.build().eval(), manifest,
                      {"class_centres": np.eye(3, 16, dtype=np.float32)})


def test_cli_calibrates_on_a_slice(data_root: Path, tiny_model: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(1)
    monkeypatch.setenv("FEDFACE_CACHE", str(tmp_path / "cache"))  # crops of this test stay in tmp
    images = tmp_path / "slice.txt"
    images.write_text("\n".join((data_root / "protocol" / "dev_images.txt").read_text().splitlines()[:SLICE_LINES]))
    before = tiny_model.read_bytes()
    out = tmp_path / "calibrated.safetensors"
    result = CliRunner().invoke(app, ["models", "calibrate", str(tiny_model), "--data", str(data_root),
                                      "--images", str(images), "--far", "0.01", "--far", "1e-3", "--out", str(out),
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert tiny_model.read_bytes() == before  # --out leaves the model alone

    manifest = load_manifest(out)
    assert set(manifest.thresholds) == {"0.01", "0.001"}
    assert printed["thresholds"] == manifest.thresholds
    assert f"{printed['impostor_pairs']} impostor pairs" in manifest.notes["thresholds"]
    assert str(images) in manifest.notes["thresholds"] and manifest.notes["source"] == "test"

    # Impostor cosines computed here, independently of the command.
    model, _ = load_model(tiny_model)
    rows = read_image_list(images)
    emb = embed_paths(model, manifest, data_root / "lfw" / "lfw-deepfunneled", [r for _, r in rows], crop="auto",
                      cache=CropCache(tmp_path / "cache"), progress=False)
    scores, same = all_pairs(emb, [i for i, _ in rows])
    impostor, genuine = scores[~same].astype(np.float64), scores[same].astype(np.float64)
    assert printed["impostor_pairs"] == len(impostor) and printed["genuine_pairs"] == len(genuine) > 0
    for key, t in manifest.thresholds.items():
        target = float(key)
        assert (impostor >= t).mean() <= target
        assert (impostor >= t - 1e-6).mean() > target  # the lowest such threshold, not merely a safe one
        assert printed["tar"][key] == pytest.approx((genuine >= t).mean())

    # The weights and the extra tensors are written back unchanged.
    calibrated, _ = load_model(out)
    a, b = model_to_numpy(model), model_to_numpy(calibrated)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert load_class_centres(out).shape == (3, 16)


def test_cli_rewrites_the_model_in_place_by_default(data_root: Path, tiny_model: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(1)
    monkeypatch.setenv("FEDFACE_CACHE", str(tmp_path / "cache"))
    images = tmp_path / "slice.txt"
    images.write_text("\n".join((data_root / "protocol" / "dev_images.txt").read_text().splitlines()[:20]))
    result = CliRunner().invoke(app, ["models", "calibrate", str(tiny_model), "--data", str(data_root),
                                      "--images", str(images), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert set(load_manifest(tiny_model).thresholds) == {"0.001", "0.0001"}  # the two default FARs
    assert not any(p.name.endswith(".tmp") for p in tiny_model.parent.iterdir())


def test_cli_refuses_a_missing_list_and_a_bad_far(tiny_model: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["models", "calibrate", str(tiny_model), "--data", str(tmp_path)])
    assert result.exit_code == 2 and "no image list" in result.stderr
    result = CliRunner().invoke(app, ["models", "calibrate", str(tiny_model), "--far", "2"])
    assert result.exit_code == 2 and "FAR must be in (0, 1)" in result.output
    assert os.path.getsize(tiny_model) > 0 and load_manifest(tiny_model).thresholds == {}
