"""Five-point face alignment to the standard ArcFace/InsightFace template.

Landmark order everywhere: left eye, right eye, nose tip, left mouth corner,
right mouth corner (left/right as seen in the image)."""

from __future__ import annotations

import numpy as np
from PIL import Image

# Template for a 112x112 crop (InsightFace `arcface_dst`).
TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


def template(size: int) -> np.ndarray:
    """The template scaled to a square crop of `size` pixels."""
    return TEMPLATE_112 * (size / 112.0)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping
    src points onto dst points (Umeyama 1991). Returns a 2x3 matrix."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError("need matching (n, 2) point sets with n >= 2")
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1.0
    rot = u @ np.diag(d) @ vt
    var_src = (src_c**2).sum() / len(src)
    scale = float((s * d).sum() / var_src) if var_src > 0 else 1.0
    t = dst_mean - scale * rot @ src_mean
    return np.hstack([scale * rot, t[:, None]])


def warp(image: Image.Image, landmarks: np.ndarray, size: int) -> Image.Image:
    """Crop `image` so that `landmarks` land on the template of a size x size crop."""
    m = similarity_transform(landmarks, template(size))
    # PIL wants the inverse map: output pixel -> input pixel.
    full = np.vstack([m, [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(full)[:2]
    return image.convert("RGB").transform(
        (size, size), Image.Transform.AFFINE, tuple(inv.flatten()), resample=Image.Resampling.BILINEAR
    )
