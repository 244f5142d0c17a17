"""Simulated devices cut the crops their model was trained on: per-photo detection (cached, the same
crops the evaluation uses) for dlib's network, the fixed crop of aligned photos for MobileFaceNet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from device_agent.photos.pipeline import Face
from fedface_common.face.manifest import ModelManifest
from fedface_lab.cached_pipeline import CachedDetectPipeline
from fedface_lab.datasets import CropCache, load_crop
from fedface_lab.simulate import device_pipeline

DLIB = ModelManifest(architecture="dlib-resnet29", input_size=150, alignment="5pt-dlib")
MOBILE = ModelManifest(width=0.5, input_size=48)


def test_each_model_gets_its_own_pipeline() -> None:
    dlib = device_pipeline(DLIB, "auto")
    assert isinstance(dlib, CachedDetectPipeline) and (dlib.size, dlib.alignment) == (150, "5pt-dlib")
    mobile = device_pipeline(MOBILE, "auto")
    assert not isinstance(mobile, CachedDetectPipeline) and mobile.mode == "aligned" and mobile.size == 48
    assert isinstance(device_pipeline(MOBILE, "detect"), CachedDetectPipeline)
    with pytest.raises(ValueError, match="unknown input mode"):
        device_pipeline(DLIB, "sideways")


def test_a_simulated_device_crops_as_the_evaluation_does(data_root: Path, tmp_path: Path) -> None:
    photo = sorted((data_root / "lfw" / "lfw-deepfunneled" / "Tony_Blair").glob("*.jpg"))[0]
    cache = CropCache(tmp_path / "cache")
    result = CachedDetectPipeline(150, "5pt-dlib", cache).process(photo)
    assert isinstance(result, Face) and result.crop.size == (150, 150)
    again = load_crop(photo, "detect", 150, CropCache(tmp_path / "other"), alignment="5pt-dlib")
    assert np.array_equal(np.asarray(result.crop), np.asarray(again))
    missing = CachedDetectPipeline(150, "5pt-dlib", cache).process(tmp_path / "nope.jpg")
    assert not isinstance(missing, Face)
