"""Aligned face crop (PIL) -> normalised float tensor, as the manifest says."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from fedface_common.face.align import TemplateName, similarity_transform, template
from fedface_common.face.manifest import ModelManifest

# Crop box (left, top, right, bottom) in a 250x250 LFW deep-funneled image that
# puts the face on the 5-point ArcFace template. Measured, not guessed: on the
# mean of 800 random deep-funneled images the darkest 5x5 spots of the eye
# regions are at (103, 112) and (146, 111), the mouth line at y=157 with its
# half-depth ends at x~107 and ~144, and the nose tip is taken half-way between
# eye and mouth lines, as on the template. The least-squares similarity from
# those five points to the 112 template has scale 0.860 and ~0 rotation
# (residuals < 1 px), which maps the template square to this box (side 130).
# Cross-check with the device's MTCNN on 50 client images (mean landmarks,
# scale + shift fit): box (60.2, 51.2, 191.5, 182.5), within 1.5 px of this
# one; with this box the detected eyes sit ~2.6 px from the template at 112 px.
# The device agent (aligned mode) and the evaluation use this one definition,
# so training and evaluation crops are the same.
DEEP_FUNNELED_BOX: tuple[float, float, float, float] = (59.0, 51.0, 189.0, 181.0)
DEEP_FUNNELED_SIZE = 250


def deep_funneled_box(alignment: TemplateName = "5pt-arcface") -> tuple[float, float, float, float]:
    """The crop box of a deep-funneled image for a template: DEEP_FUNNELED_BOX for the ArcFace
    template, and for another the square that the similarity from the ArcFace template to it
    (both in units of the crop's side) makes of that box."""
    if alignment == "5pt-arcface":
        return DEEP_FUNNELED_BOX
    m = similarity_transform(template(1, alignment), template(1, "5pt-arcface"))
    left, top, right, _ = DEEP_FUNNELED_BOX
    side = right - left
    corners = np.array([[0.0, 0.0], [1.0, 1.0]]) @ m[:, :2].T + m[:, 2]  # in ArcFace crop units
    (x0, y0), (x1, y1) = np.array([left, top]) + corners * side
    return (float(x0), float(y0), float(x1), float(y1))


def aligned_center_crop(image: Image.Image, size: int, alignment: TemplateName = "5pt-arcface") -> Image.Image:
    """A size x size template-aligned crop of an already aligned photo (LFW
    deep-funneled 250x250). Other sizes are assumed to be the same framing
    scaled, so the box scales with the image."""
    image = image.convert("RGB")
    sx = image.width / DEEP_FUNNELED_SIZE
    sy = image.height / DEEP_FUNNELED_SIZE
    left, top, right, bottom = deep_funneled_box(alignment)
    box = (left * sx, top * sy, right * sx, bottom * sy)
    return image.resize((size, size), Image.Resampling.BILINEAR, box=box)


def image_to_array(image: Image.Image, manifest: ModelManifest) -> np.ndarray:
    """(3, S, S) float32, resized to the manifest's input size if needed."""
    image = image.convert("RGB")
    size = manifest.input_size
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(image, dtype=np.float32) / 255.0
    if manifest.colour_order == "BGR":
        arr = arr[:, :, ::-1]
    mean = np.asarray(manifest.mean, dtype=np.float32)
    std = np.asarray(manifest.std, dtype=np.float32)
    out: np.ndarray = ((arr - mean) / std).astype(np.float32)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def to_tensor(image: Image.Image, manifest: ModelManifest) -> torch.Tensor:
    return torch.from_numpy(image_to_array(image, manifest))


def batch_to_tensor(images: Sequence[Image.Image], manifest: ModelManifest) -> torch.Tensor:
    """(N, 3, S, S) float32 batch."""
    if not images:
        s = manifest.input_size
        return torch.empty((0, 3, s, s), dtype=torch.float32)
    return torch.from_numpy(np.stack([image_to_array(im, manifest) for im in images]))


def normalise_uint8(batch: torch.Tensor, manifest: ModelManifest) -> torch.Tensor:
    """(N, S, S, 3) uint8 RGB crops (as training keeps them in memory) -> (N, 3, S, S) float."""
    x = batch.permute(0, 3, 1, 2).float().div_(255.0)
    if manifest.colour_order == "BGR":
        x = x.flip(1)
    mean = torch.tensor(manifest.mean, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(manifest.std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std
