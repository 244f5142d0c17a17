"""Readers for the benchmark protocol files and the CFP pretraining set,
with an on-disk cache of aligned crops (outside the repository)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from fedface_common.face.align import TemplateName, similarity_transform, template, warp
from fedface_common.face.manifest import ModelManifest
from fedface_common.face.preprocess import aligned_center_crop

# center: the fixed crop of an already aligned photo; detect: MTCNN and a 5-point warp, per photo,
# as a device does; cfp: the CFP fiducials; none: resize only; auto: the model's own (crop_method_for).
CropMethod = Literal["center", "detect", "cfp", "none", "auto"]
# Bump when an alignment rule changes, so stale cached crops are not reused.
ALIGN_VERSION = 1


def default_cache_dir() -> Path:
    return Path(os.environ.get("FEDFACE_CACHE", Path.home() / ".cache" / "fedface"))


# ---------------------------------------------------------------- protocol files


@dataclass(frozen=True)
class Pair:
    a: str  # image path relative to the LFW root
    b: str
    same: bool
    fold: int


def lfw_path(name: str, index: int) -> str:
    return f"{name}/{name}_{index:04d}.jpg"


def read_clients(path: str | Path) -> list[tuple[str, int]]:
    """clients.txt: `name<TAB>image count` per line."""
    out = []
    for line in _lines(path):
        name, count = line.split("\t")
        out.append((name, int(count)))
    return out


def read_pairs(path: str | Path) -> list[Pair]:
    """LFW pairs.txt format: header `folds<TAB>n`, then per fold n same-person
    lines `name i j` and n different-person lines `name1 i name2 j`."""
    lines = list(_lines(path))
    folds, per = (int(x) for x in lines[0].split())
    body = lines[1:]
    if len(body) != folds * 2 * per:
        raise ValueError(f"{path}: header promises {folds}x2x{per} pairs, found {len(body)} lines")
    pairs = []
    for i, line in enumerate(body):
        parts = line.split("\t")
        fold = i // (2 * per)
        if len(parts) == 3:
            pairs.append(Pair(lfw_path(parts[0], int(parts[1])), lfw_path(parts[0], int(parts[2])), True, fold))
        elif len(parts) == 4:
            pairs.append(Pair(lfw_path(parts[0], int(parts[1])), lfw_path(parts[2], int(parts[3])), False, fold))
        else:
            raise ValueError(f"{path}:{i + 2}: expected 3 or 4 tab-separated fields")
    return pairs


def read_image_list(path: str | Path) -> list[tuple[str, str]]:
    """(identity, relative path) per line. Two-column `identity<TAB>path` lines
    as in dev_images.txt, or a bare path whose parent folder is the identity."""
    out = []
    for line in _lines(path):
        parts = line.split("\t")
        if len(parts) == 2:
            out.append((parts[0], parts[1]))
        elif len(parts) == 1:
            out.append((Path(parts[0]).parent.name, parts[0]))
        else:
            raise ValueError(f"{path}: expected `path` or `identity<TAB>path`, got {line!r}")
    return out


def _lines(path: str | Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.rstrip("\r\n")
            if line.strip():
                yield line


# ---------------------------------------------------------------- CFP


@dataclass(frozen=True)
class CfpImage:
    identity: str  # folder name, e.g. "001"
    pose: Literal["frontal", "profile"]
    image: Path
    fiducials: Path


def list_cfp(root: str | Path, max_identities: int | None = None) -> list[CfpImage]:
    root = Path(root)
    ids = sorted(p.name for p in (root / "Images").iterdir() if p.is_dir())
    if max_identities is not None:
        ids = ids[:max_identities]
    out = []
    for ident in ids:
        for pose in ("frontal", "profile"):
            for img in sorted((root / "Images" / ident / pose).glob("*.jpg")):
                fid = root / "Fiducials" / ident / pose / (img.stem + ".txt")
                if fid.exists():
                    out.append(CfpImage(ident, pose, img, fid))  # type: ignore[arg-type]
    return out


def read_fiducials(path: str | Path) -> np.ndarray:
    """(30, 2) CFP landmarks."""
    pts = np.loadtxt(path, delimiter=",", dtype=np.float64)
    if pts.shape != (30, 2):
        raise ValueError(f"{path}: expected 30 x,y points, got {pts.shape}")
    return pts


# CFP's 30 points annotate one half of the face (the image-left half on
# frontal photos, the visible half on profiles) plus the midline. Identified by
# plotting their indices on photos: 0-8 jaw (8 = chin), 9-11 brow, 12-17 eye
# contour (12 outer, 15 inner corner), 18-21 nose bridge down to the tip,
# 22 subnasale, 23-24 nostril, 25 mouth corner, 26-29 lip midline.
EYE = slice(12, 18)
NOSE_TIP = 21
MOUTH_CORNER = 25
MIDLINE = [8, 18, 19, 20, 21, 22, 26, 27, 28, 29]
LIP_MIDLINE = slice(26, 30)


def _reflect(points: np.ndarray, line_points: np.ndarray) -> np.ndarray:
    """Mirror points across the least-squares line through line_points."""
    centre = line_points.mean(0)
    _, _, vt = np.linalg.svd(line_points - centre)
    d = vt[0]
    rel = points - centre
    along = rel @ d
    return centre + 2 * np.outer(along, d) - rel


def cfp_landmarks5(points: np.ndarray) -> np.ndarray:
    """Five template points (left eye, right eye, nose, left/right mouth corner,
    image left/right) from a frontal photo's 30 points: the unannotated eye and
    mouth corner are the annotated ones mirrored across the facial midline."""
    eye = points[EYE].mean(0)
    mouth = points[MOUTH_CORNER]
    eye2, mouth2 = _reflect(np.stack([eye, mouth]), points[MIDLINE])
    if eye[0] <= eye2[0]:
        return np.stack([eye, eye2, points[NOSE_TIP], mouth, mouth2])
    return np.stack([eye2, eye, points[NOSE_TIP], mouth2, mouth])


def cfp_profile_correspondences(points: np.ndarray, size: int,
                                alignment: TemplateName = "5pt-arcface") -> tuple[np.ndarray, np.ndarray]:
    """Source and template points for a profile photo. Mirroring fails there
    (the far eye is hidden, the midline is the nose ridge), so fit only what is
    visible: the eye and mouth corner go to the template's points of that side,
    the lip midline to the template's mouth centre. Horizontal distances are
    foreshortened by the yaw but vertical ones are not, so the fit's scale is
    set by the eye-mouth height, as on frontal photos."""
    t = template(size, alignment)
    eye = points[EYE].mean(0)
    lip = points[LIP_MIDLINE].mean(0)
    visible_left = eye[0] <= lip[0]
    t_eye, t_mouth = (t[0], t[3]) if visible_left else (t[1], t[4])
    src = np.stack([eye, points[MOUTH_CORNER], lip])
    dst = np.stack([t_eye, t_mouth, (t[3] + t[4]) / 2])
    return src, dst


def align_cfp(image: Image.Image, points: np.ndarray, pose: str, size: int,
              alignment: TemplateName = "5pt-arcface") -> Image.Image:
    if pose == "frontal":
        return warp(image, cfp_landmarks5(points), size, alignment)
    src, dst = cfp_profile_correspondences(points, size, alignment)
    m = similarity_transform(src, dst)
    inv = np.linalg.inv(np.vstack([m, [0.0, 0.0, 1.0]]))[:2]
    return image.convert("RGB").transform(
        (size, size), Image.Transform.AFFINE, tuple(inv.flatten()), resample=Image.Resampling.BILINEAR
    )


# ---------------------------------------------------------------- crop cache


class CropCache:
    """Aligned crops as PNG under <cache>/crops, keyed by a hash of the source
    path, crop method, size and ALIGN_VERSION. PNG is lossless, so a cached
    crop is bit-identical to a fresh one."""

    def __init__(self, root: str | Path | None = None, enabled: bool = True) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.enabled = enabled

    def path_for(self, source: Path, method: str, size: int) -> Path:
        key = f"{ALIGN_VERSION}:{method}:{size}:{source.resolve()}"
        h = hashlib.sha256(key.encode()).hexdigest()
        return self.root / "crops" / h[:2] / f"{h}.png"

    def get(self, source: Path, method: str, size: int, make: Callable[[], Image.Image]) -> Image.Image:
        if not self.enabled:
            return make()
        target = self.path_for(source, method, size)
        if target.exists():
            try:
                with Image.open(target) as im:
                    return im.convert("RGB")
            except OSError:
                pass  # a truncated file from a killed run: rebuild it
        crop = make()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        crop.save(tmp, format="PNG")
        tmp.replace(target)
        return crop


def crop_method_for(manifest: ModelManifest) -> CropMethod:
    """How a model's evaluation and centralized crops are made: per-photo detection and alignment for
    dlib's network (trained on chips cut per photo from landmarks), the calibrated fixed crop for
    MobileFaceNet (trained on it)."""
    return "detect" if manifest.alignment == "5pt-dlib" else "center"


_detectors: dict[tuple[int, str], Callable[[Image.Image], Image.Image]] = {}


def detect_and_align(image: Image.Image, size: int, alignment: TemplateName) -> Image.Image:
    """MTCNN and the 5-point warp, as the device agent does; a photo in which no face is found gets
    the fixed crop instead, so that an evaluation embeds every image of its list."""
    from device_agent.photos.pipeline import Face, FacePipeline  # MTCNN's weights load only when asked

    key = (size, alignment)
    if key not in _detectors:
        pipeline = FacePipeline(size=size, mode="detect", alignment=alignment, pick="central", min_face_px=20)

        def run(im: Image.Image) -> Image.Image:
            result = pipeline.process_image(im.convert("RGB"))
            return result.crop if isinstance(result, Face) else aligned_center_crop(im, size, alignment)

        _detectors[key] = run
    return _detectors[key](image)


def load_crop(path: Path, method: CropMethod, size: int, cache: CropCache, fiducials: Path | None = None,
              pose: str = "frontal", alignment: TemplateName = "5pt-arcface") -> Image.Image:
    """One aligned size x size RGB crop. `center`: already aligned photo (LFW
    deep-funneled); `detect`: MTCNN + warp; `cfp`: warp with the fiducials; `none`: just resize."""
    if method == "auto":
        raise ValueError("resolve 'auto' with crop_method_for(manifest) first")

    def make() -> Image.Image:
        with Image.open(path) as im:
            if method == "center":
                return aligned_center_crop(im, size, alignment)
            if method == "detect":
                return detect_and_align(im, size, alignment)
            if method == "cfp":
                if fiducials is None:
                    raise ValueError("cfp crops need a fiducials file")
                return align_cfp(im, read_fiducials(fiducials), pose, size, alignment)
            return im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)

    tag = f"{method}-{pose}" if method == "cfp" else method
    if alignment != "5pt-arcface":
        tag += f"-{alignment}"
    return cache.get(path, tag, size, make)


def load_cfp_crops(
    items: list[CfpImage], size: int, cache: CropCache, progress: Callable[[int], None] | None = None,
    alignment: TemplateName = "5pt-arcface",
) -> np.ndarray:
    """(N, size, size, 3) uint8 aligned crops of CFP images."""
    out = np.empty((len(items), size, size, 3), dtype=np.uint8)
    for i, item in enumerate(items):
        out[i] = np.asarray(load_crop(item.image, "cfp", size, cache, item.fiducials, item.pose, alignment))
        if progress is not None:
            progress(1)
    return out
