"""Are two photos of the same person? Detect and align the largest face of each, as a phone would, embed
both with the model, and compare their cosine with the threshold the model was calibrated for at the
wanted false accept rate (`fedface models calibrate`), or with one given explicitly."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from torch import nn

from fedface_common.face.checkpoint import ModelFileError, load_model
from fedface_common.face.manifest import ModelManifest
from fedface_lab.embed import embed_crops


class VerifyError(Exception):
    """No decision can be made; the message says what is wrong (which photo, and why)."""


@dataclass(frozen=True)
class PhotoFace:
    path: Path
    crop: Image.Image
    faces: int  # faces detected in the photo; the largest is taken


@dataclass(frozen=True)
class Verdict:
    photo_a: str
    photo_b: str
    cosine: float
    threshold: float
    far: float | None  # the FAR the threshold was calibrated for; None for an explicit threshold
    threshold_source: str  # "manifest" or "explicit"
    same_person: bool
    faces_a: int
    faces_b: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def describe(self) -> str:
        """A few lines for a person to read."""
        how = "given" if self.far is None else f"calibrated for FAR {self.far:g}"
        lines = [f"{self.photo_a} vs {self.photo_b}",
                 f"cosine     {self.cosine:.4f}",
                 f"threshold  {self.threshold:.4f} ({how})",
                 f"result     {'same person' if self.same_person else 'different people'}"]
        for name, n in ((self.photo_a, self.faces_a), (self.photo_b, self.faces_b)):
            if n > 1:
                lines.append(f"note       {n} faces in {name}; the largest was compared")
        return "\n".join(lines)


def manifest_threshold(manifest: ModelManifest, far: float, model_name: str = "MODEL") -> float:
    """The calibrated threshold for `far`. Keys are compared as numbers, so "1e-3" and "0.001" match."""
    for key, value in manifest.thresholds.items():
        try:
            if math.isclose(float(key), far, rel_tol=1e-9):
                return float(value)
        except ValueError:
            continue  # a key that is not a number cannot be the one asked for
    known = ", ".join(sorted(manifest.thresholds)) or "none"
    raise VerifyError(f"the model has no threshold for FAR {far:g} (calibrated: {known}); run "
                      f"`fedface models calibrate {model_name} --far {far:g}` or give --threshold")


def load_verifier(model_path: str | Path) -> tuple[nn.Module, ModelManifest]:
    try:
        return load_model(model_path)
    except FileNotFoundError as exc:
        raise VerifyError(f"model {model_path}: no such file") from exc
    except (ModelFileError, ValueError, OSError) as exc:
        raise VerifyError(f"model {model_path}: not a FedFace model file ({exc})") from exc


# The pipeline's skip reasons, in words.
_REASONS = {
    "unreadable": "cannot be read",
    "not_an_image": "not an image",
    "too_large": "too large",
    "too_small": "too small for a usable face",
    "no_face": "no face found",
    "error": "face detection failed",
}


def face_crops(paths: Sequence[str | Path], manifest: ModelManifest) -> list[PhotoFace]:
    """The largest face of each photo, aligned to the model's template and input size. Raises VerifyError
    naming the first photo that cannot be read or shows no usable face."""
    from device_agent.photos.pipeline import Face, FacePipeline  # MTCNN's weights load only here

    pipeline = FacePipeline(size=manifest.input_size, mode="detect", alignment=manifest.alignment, pick="largest")
    out = []
    for path in paths:
        result = pipeline.process(path)
        if not isinstance(result, Face):
            detail = f" ({result.detail})" if result.detail else ""
            raise VerifyError(f"photo {path}: {_REASONS.get(result.reason.value, result.reason.value)}{detail}")
        out.append(PhotoFace(Path(path), result.crop, result.info.faces or 1))
    return out


def verify(
    model_path: str | Path,
    photo_a: str | Path,
    photo_b: str | Path,
    far: float = 1e-3,
    threshold: float | None = None,
) -> Verdict:
    """The decision for two photos. An explicit `threshold` overrides the calibrated one for `far`."""
    model, manifest = load_verifier(model_path)
    # Before detection, so a model without thresholds fails at once.
    chosen = threshold if threshold is not None else manifest_threshold(manifest, far, str(model_path))
    faces = face_crops([photo_a, photo_b], manifest)
    emb = embed_crops(model, manifest, [f.crop for f in faces])
    cosine = float(np.dot(emb[0].astype(np.float64), emb[1].astype(np.float64)))
    return Verdict(str(photo_a), str(photo_b), cosine, float(chosen), None if threshold is not None else far,
                   "explicit" if threshold is not None else "manifest", cosine >= chosen,
                   faces[0].faces, faces[1].faces)
