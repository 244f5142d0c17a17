"""Decision thresholds for a model, measured on the development images.

A threshold for a false accept rate (FAR) is the lowest cosine at which at most that fraction of the
impostor pairs (two photos of different people) would be accepted as the same person. They are stored in
the model's manifest (`thresholds`, keyed by the FAR), so that whoever runs the model (`fedface verify`,
an app) makes the same yes/no decision without the data. Convention, as in fedface_lab.verification:
a pair is accepted when cosine >= threshold."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedface_common.face.checkpoint import decode_model, save_model
from fedface_common.face.manifest import ModelManifest
from fedface_lab.datasets import CropCache, read_image_list
from fedface_lab.embed import embed_paths
from fedface_lab.verification import all_pairs

DEFAULT_FARS = (1e-3, 1e-4)
DEV_IMAGES = Path("protocol") / "dev_images.txt"
LFW_ROOT = Path("lfw") / "lfw-deepfunneled"


def far_key(far: float) -> str:
    """The manifest key of a FAR: Python's shortest repr, so 1e-3 and 0.001 give the same "0.001"."""
    return repr(float(far))


def threshold_at_far(impostor: np.ndarray, far: float) -> float:
    """The lowest threshold that accepts at most floor(far * n) of the n impostor scores.

    That is just above the (k+1)-th highest impostor score, k = floor(far * n): everything at or below
    it is rejected. Equal scores are never split, so with ties fewer than k pairs may be accepted."""
    if not 0.0 < far < 1.0:
        raise ValueError(f"FAR must be in (0, 1), got {far}")
    scores = np.asarray(impostor, dtype=np.float64).ravel()
    n = len(scores)
    if n == 0:
        raise ValueError("no impostor pairs")
    # The small tolerance keeps e.g. 0.001 * 1000 (not exactly 1.0 for every n) from rounding down.
    k = min(math.floor(far * n + 1e-9), n - 1)
    # The (k+1)-th highest score without sorting 1.6 million pairs: partition around index n - 1 - k.
    kth = float(np.partition(scores, n - 1 - k)[n - 1 - k])
    return float(np.nextafter(kth, np.inf))


@dataclass(frozen=True)
class Calibration:
    thresholds: dict[str, float]  # FAR key -> cosine threshold
    tar: dict[str, float]  # FAR key -> genuine pairs accepted at that threshold
    far: dict[str, float]  # FAR key -> impostor pairs accepted (<= the target)
    images: int
    genuine_pairs: int
    impostor_pairs: int
    source: str  # the image list, as written into the manifest's notes

    def note(self) -> str:
        """What the thresholds were measured on, for the manifest's notes["thresholds"]."""
        return (f"measured on {self.source}: {self.images} images, {self.impostor_pairs} impostor pairs, "
                f"{self.genuine_pairs} genuine pairs; accept when cosine >= threshold")

    def to_dict(self) -> dict[str, object]:
        return {"thresholds": self.thresholds, "tar": self.tar, "far": self.far, "images": self.images,
                "genuine_pairs": self.genuine_pairs, "impostor_pairs": self.impostor_pairs,
                "source": self.source}


def calibrate_scores(scores: np.ndarray, same: np.ndarray, fars: Sequence[float], source: str,
                     images: int) -> Calibration:
    """Thresholds and what they achieve, from the cosines of all pairs and whether each is genuine."""
    scores = np.asarray(scores, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    genuine, impostor = scores[same], scores[~same]
    if len(genuine) == 0 or len(impostor) == 0:
        raise ValueError("the image list must give both genuine and impostor pairs")
    thresholds, tar, far_got = {}, {}, {}
    for far in fars:
        key = far_key(far)
        t = threshold_at_far(impostor, far)
        thresholds[key] = t
        tar[key] = float((genuine >= t).mean())
        far_got[key] = float((impostor >= t).mean())
    return Calibration(thresholds, tar, far_got, images, len(genuine), len(impostor), source)


def calibrate(
    model_path: str | Path,
    data_root: str | Path,
    fars: Sequence[float] = DEFAULT_FARS,
    out: str | Path | None = None,
    images_file: str | Path | None = None,
    cache: CropCache | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> tuple[Path, Calibration]:
    """Embed the listed images (default: the development images) with the model's own crops, calibrate
    a threshold for each FAR, and write the model with them in its manifest to `out` (default: the model
    file itself, replaced atomically). The weights and extra tensors are written back unchanged.
    The image paths are relative to <data_root>/lfw/lfw-deepfunneled, as in the protocol files."""
    data_root = Path(data_root)
    listing = Path(images_file) if images_file is not None else data_root / DEV_IMAGES
    if not listing.is_file():
        raise FileNotFoundError(f"no image list at {listing}")
    model_path = Path(model_path)
    model, manifest, extras = decode_model(model_path.read_bytes())
    rows = read_image_list(listing)
    identities = [ident for ident, _ in rows]
    emb = embed_paths(model, manifest, data_root / LFW_ROOT, [rel for _, rel in rows], crop="auto",
                      batch_size=batch_size, cache=cache, progress=progress)
    scores, same = all_pairs(emb, identities)
    source = listing.relative_to(data_root).as_posix() if listing.is_relative_to(data_root) else str(listing)
    result = calibrate_scores(scores, same, fars, source, len(rows))
    # The thresholds replace any earlier ones, so that one note describes them all.
    updated = ModelManifest.model_validate({**manifest.model_dump(), "thresholds": result.thresholds,
                                            "notes": {**manifest.notes, "thresholds": result.note()}})
    target = save_model(Path(out) if out is not None else model_path, model, updated, extras)
    return target, result
