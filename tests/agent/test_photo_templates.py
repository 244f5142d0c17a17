"""Crops for the model that arrives: the template and size follow the manifest, and the owner's face is
the largest or the central one as the pipeline is told."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from device_agent.photos.detect import Detections
from device_agent.photos.pipeline import Face, FacePipeline
from device_agent.runner import FolderPhotos
from fedface_common.face.align import template
from fedface_common.face.manifest import ModelManifest

DLIB = ModelManifest(architecture="dlib-resnet29", input_size=150, alignment="5pt-dlib")


def _face_landmarks(cx: float, cy: float, size: float, shape: str) -> np.ndarray:
    """Five points of an upright face of `size` px centred at (cx, cy), laid out as template `shape`."""
    return (template(1, shape) - 0.5) * size + np.array([cx, cy])  # type: ignore[arg-type]


class TwoFaces:
    """A detector that finds a large face at the left edge and a smaller one in the middle."""

    min_face_size = 20

    def __init__(self, shape: str = "5pt-arcface") -> None:
        self.shape = shape

    def detect(self, image: Image.Image) -> Detections:
        w, h = image.size
        big, small = (w * 0.2, h / 2, 120.0), (w / 2, h / 2, 80.0)
        boxes = np.array([[x - s / 2, y - s / 2, x + s / 2, y + s / 2] for x, y, s in (big, small)])
        marks = np.stack([_face_landmarks(x, y, s, self.shape) for x, y, s in (big, small)])
        return Detections(boxes, np.array([0.99, 0.98]), marks)


def _photo(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "photos" / "a.png"
    path.parent.mkdir()
    Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(path)
    return path


def _taken_box(pipeline: FacePipeline, path: Path) -> Any:
    result = pipeline.process(path)
    assert isinstance(result, Face)
    return result.info.box


def test_the_owner_is_the_largest_face_or_the_central_one(tmp_path: Path) -> None:
    path = _photo(tmp_path)
    largest = _taken_box(FacePipeline(112, "detect", detector=TwoFaces()), path)  # type: ignore[arg-type]
    central = _taken_box(FacePipeline(112, "detect", pick="central", detector=TwoFaces()),  # type: ignore[arg-type]
                         path)
    assert largest[2] - largest[0] == 120 and central[2] - central[0] == 80


def test_crops_follow_the_template_of_the_model_that_arrives(tmp_path: Path) -> None:
    path = _photo(tmp_path)
    pipeline = FacePipeline(112, "detect", detector=TwoFaces())  # type: ignore[arg-type]
    photos = FolderPhotos(path.parent, pipeline)
    default, _ = photos.load()
    dlib, report = photos.load(DLIB)
    assert default[0].size == (112, 112) and dlib[0].size == (150, 150) and report.used == 1
    assert photos.load(DLIB)[0] is dlib  # cut once per template
    assert pipeline.for_template(112, "5pt-arcface") is pipeline
    assert pipeline.for_template(150, "5pt-dlib").detector is pipeline.detector


@pytest.mark.parametrize(("size", "name"), [(112, "5pt-arcface"), (150, "5pt-dlib")])
def test_a_face_shaped_like_the_template_lands_on_it(tmp_path: Path, size: int, name: str) -> None:
    pipeline = FacePipeline(112, "detect", detector=TwoFaces(name)).for_template(size, name)  # type: ignore[arg-type]
    result = pipeline.process(_photo(tmp_path))
    assert isinstance(result, Face) and result.crop.size == (size, size) and result.info.crop_landmarks is not None
    np.testing.assert_allclose(result.info.crop_landmarks, template(size, name), atol=1e-6)  # type: ignore[arg-type]
