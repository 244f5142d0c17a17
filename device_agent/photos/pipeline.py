"""Photo file -> aligned face crop, or a reason it was skipped.

Mode "detect" finds faces with MTCNN and warps the owner's (see Pick) onto the model's
5-point template (fedface_common.face.align). Mode "aligned" trusts photos that are
already aligned (LFW deep-funneled) and applies a calibrated fixed crop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from device_agent.photos.detect import MTCNNDetector
from device_agent.photos.load import LoadError, SkipReason, load_rgb
from fedface_common.face.align import TemplateName, similarity_transform, template, warp
from fedface_common.face.preprocess import aligned_center_crop

log = logging.getLogger(__name__)

Mode = Literal["detect", "aligned"]
# Which of several detected faces is the owner's: the largest (a selfie, a phone's own photos) or the
# one nearest the photo's centre (collections cropped around their subject, such as LFW, whose photos
# often show a larger face beside the subject's).
Pick = Literal["largest", "central"]


@dataclass(frozen=True)
class FaceInfo:
    """How a crop was obtained. Coordinates are in the upright (EXIF-applied) full-resolution photo."""

    faces: int | None  # faces detected; None in "aligned" mode (no detector run)
    several: bool  # several faces were found and one was picked (FacePipeline's `pick`)
    box: np.ndarray | None = None  # (4,) x1, y1, x2, y2 of the face taken
    prob: float | None = None
    landmarks: np.ndarray | None = None  # (5, 2) in the photo
    crop_landmarks: np.ndarray | None = None  # (5, 2) the same points in the crop


@dataclass(frozen=True)
class Face:
    path: Path
    crop: Image.Image  # RGB, size x size
    info: FaceInfo


@dataclass(frozen=True)
class Skip:
    path: Path
    reason: SkipReason
    detail: str = ""


Result = Face | Skip


@dataclass(frozen=True)
class ReportEntry:
    name: str  # path relative to the folder
    used: bool
    reason: SkipReason | None = None
    faces: int | None = None
    several: bool = False
    detail: str = ""


@dataclass
class FolderReport:
    entries: list[ReportEntry] = field(default_factory=list)

    @property
    def used(self) -> int:
        return sum(e.used for e in self.entries)

    @property
    def skipped(self) -> int:
        return len(self.entries) - self.used

    def counts(self) -> dict[str, int]:
        """{"used": n, "<reason>": n, ...} with only the non-zero reasons."""
        out = {"used": self.used}
        for e in self.entries:
            if e.reason is not None:
                out[e.reason.value] = out.get(e.reason.value, 0) + 1
        return out


class FacePipeline:
    """Turns photo files into size x size aligned RGB face crops.

    min_face_px: the face box taken must be at least this many pixels (its
    shorter side) in the original photo, else TOO_SMALL: an upscaled blur
    teaches the model little. detect_max_side: photos are downscaled so that
    their longer side is at most this before detection (phone photos are
    ~4000 px; faces that matter stay well above MTCNN's 20 px minimum), and
    the landmarks are mapped back to full resolution for the warp.
    num_threads: if given, caps torch's intra-op threads (process-wide).
    """

    def __init__(
        self,
        size: int = 112,
        mode: Mode = "detect",
        *,
        alignment: TemplateName = "5pt-arcface",
        pick: Pick = "largest",
        detector: MTCNNDetector | None = None,
        min_face_px: int = 40,
        detect_max_side: int = 1024,
        max_pixels: int = 60_000_000,
        num_threads: int | None = None,
    ) -> None:
        if mode not in ("detect", "aligned"):
            raise ValueError(f"unknown mode {mode!r}")
        if size < 16:
            raise ValueError("size must be >= 16")
        self.size = size
        self.mode: Mode = mode
        template(size, alignment)  # an unknown template fails here, not on the first photo
        self.alignment: TemplateName = alignment
        if pick not in ("largest", "central"):
            raise ValueError(f"unknown face choice {pick!r}")
        self.pick: Pick = pick
        self.min_face_px = min_face_px
        self.detect_max_side = detect_max_side
        self.max_pixels = max_pixels
        if num_threads is not None:
            torch.set_num_threads(max(1, num_threads))
        # The detector (and its weights) is only needed, and only loaded, in detect mode.
        self.detector = detector if detector is not None or mode == "aligned" else MTCNNDetector()
        self._options = {"min_face_px": min_face_px, "detect_max_side": detect_max_side, "max_pixels": max_pixels}

    def for_template(self, size: int, alignment: TemplateName) -> FacePipeline:
        """The same pipeline (and detector) cutting crops of another size or template: a model of
        another architecture may arrive from the server."""
        if (size, alignment) == (self.size, self.alignment):
            return self
        return FacePipeline(size, self.mode, alignment=alignment, pick=self.pick, detector=self.detector,
                            **self._options)

    def process(self, path: str | Path) -> Result:
        """One photo file -> Face or Skip. Never raises for bad input."""
        path = Path(path)
        try:
            image = load_rgb(path, max_pixels=self.max_pixels)
        except LoadError as exc:
            return Skip(path, exc.reason, exc.detail)
        return self.process_image(image, path)

    def process_image(self, image: Image.Image, path: Path = Path("<memory>")) -> Result:
        """An upright RGB image -> Face or Skip."""
        try:
            if self.mode == "aligned":
                if min(image.size) < self.min_face_px:
                    return Skip(path, SkipReason.TOO_SMALL, f"image {image.size[0]}x{image.size[1]}")
                return Face(path, aligned_center_crop(image, self.size, self.alignment),
                            FaceInfo(faces=None, several=False))
            return self._detect_and_align(image, path)
        except Exception as exc:  # a bug must not stop a whole folder; it is logged
            log.exception("face pipeline failed on %s", path)
            return Skip(path, SkipReason.ERROR, f"{type(exc).__name__}: {exc}")

    def _detect_and_align(self, image: Image.Image, path: Path) -> Result:
        assert self.detector is not None
        width, height = image.size
        if min(width, height) < self.detector.min_face_size:
            return Skip(path, SkipReason.TOO_SMALL, f"image {width}x{height}")
        small = image
        if max(width, height) > self.detect_max_side:
            f = self.detect_max_side / max(width, height)
            det_size = (max(1, round(width * f)), max(1, round(height * f)))
            # reducing_gap: fast box pre-reduction, then bilinear; antialiased either way.
            small = image.resize(det_size, Image.Resampling.BILINEAR, reducing_gap=3.0)
        found = self.detector.detect(small)
        if not len(found):
            return Skip(path, SkipReason.NO_FACE)
        # Back to full resolution (exact per axis, as rounding may differ).
        back = np.array([width / small.size[0], height / small.size[1]])
        boxes = found.boxes * np.tile(back, 2)
        if self.pick == "central":
            centres = (boxes[:, :2] + boxes[:, 2:]) / 2
            i = int(np.argmin(((centres - np.array([width, height]) / 2) ** 2).sum(axis=1)))
        else:
            i = int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
        box, marks = boxes[i], found.landmarks[i] * back
        side = float(min(box[2] - box[0], box[3] - box[1]))
        if side < self.min_face_px:
            return Skip(path, SkipReason.TOO_SMALL, f"face taken {side:.0f} px < {self.min_face_px}")
        crop, crop_marks = align_face(image, marks, self.size, self.alignment)
        info = FaceInfo(len(found), len(found) > 1, box, float(found.probs[i]), marks, crop_marks)
        return Face(path, crop, info)

    def process_folder(self, directory: str | Path, recursive: bool = False) -> tuple[list[Image.Image], FolderReport]:
        """Every file in `directory` (sorted; subfolders too if recursive) -> crops and a per-file report."""
        root = Path(directory)
        if not root.is_dir():
            raise NotADirectoryError(f"not a folder: {root}")
        paths = sorted(p for p in (root.rglob("*") if recursive else root.iterdir()) if not p.is_dir())
        crops: list[Image.Image] = []
        report = FolderReport()
        for p in paths:
            result = self.process(p)
            name = p.relative_to(root).as_posix()
            if isinstance(result, Face):
                crops.append(result.crop)
                report.entries.append(ReportEntry(name, True, None, result.info.faces, result.info.several))
            else:
                report.entries.append(ReportEntry(name, False, result.reason, detail=result.detail))
        return crops, report


def align_face(image: Image.Image, landmarks: np.ndarray, size: int,
               alignment: TemplateName = "5pt-arcface") -> tuple[Image.Image, np.ndarray]:
    """Warp `landmarks` onto the template; returns the crop and where the landmarks land in it.

    align.warp samples bilinearly without prefiltering, which aliases when the
    face is much larger than the crop (a phone selfie). So first cut out just
    the region the crop covers and box-reduce it until each crop pixel spans
    at most ~2 source pixels.
    """
    m = similarity_transform(landmarks, template(size, alignment))
    crop_marks = landmarks @ m[:, :2].T + m[:, 2]
    scale = float(np.hypot(m[0, 0], m[1, 0]))  # crop pixels per source pixel
    reduce = int(0.5 / scale) if scale > 0 else 1
    if reduce < 2:
        return warp(image, landmarks, size, alignment), crop_marks
    inv = np.linalg.inv(np.vstack([m, [0.0, 0.0, 1.0]]))[:2]
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], dtype=np.float64)
    src = corners @ inv[:, :2].T + inv[:, 2]
    x0, y0 = np.floor(src.min(0)).astype(int) - reduce
    x1, y1 = np.ceil(src.max(0)).astype(int) + reduce
    # Cropping outside the photo pads with black, exactly as warp would.
    region = image.crop((int(x0), int(y0), int(x1), int(y1))).reduce(reduce)
    local = (landmarks - np.array([x0, y0])) / reduce
    return warp(region, local, size, alignment), crop_marks
