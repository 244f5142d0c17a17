"""Five-point face alignment to a model's template.

Two templates: the standard ArcFace/InsightFace one (MobileFaceNet) and dlib's
face chip (dlib's ResNet descriptor, which was trained on chips cut with it).
Landmark order everywhere: left eye, right eye, nose tip, left mouth corner,
right mouth corner (left/right as seen in the image)."""

from __future__ import annotations

from typing import Literal

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


# dlib's mean face (`get_face_chip_details`, landmarks 17-67 of the 68-point scheme) in
# [0, 1] face coordinates; its chips add `DLIB_PADDING` of the face's size on every side.
_DLIB_MEAN_FACE_X = (
    0.000213256, 0.0752622, 0.18113, 0.29077, 0.393397, 0.586856, 0.689483, 0.799124, 0.904991, 0.98004,
    0.490127, 0.490127, 0.490127, 0.490127, 0.36688, 0.426036, 0.490127, 0.554217, 0.613373, 0.121737,
    0.187122, 0.265825, 0.334606, 0.260918, 0.182743, 0.645647, 0.714428, 0.793132, 0.858516, 0.79751,
    0.719335, 0.254149, 0.340985, 0.428858, 0.490127, 0.551395, 0.639268, 0.726104, 0.642159, 0.556721,
    0.490127, 0.423532, 0.338094, 0.290379, 0.428096, 0.490127, 0.552157, 0.689874, 0.553364, 0.490127,
    0.42689,
)
_DLIB_MEAN_FACE_Y = (
    0.106454, 0.038915, 0.0187482, 0.0344891, 0.0773906, 0.0773906, 0.0344891, 0.0187482, 0.038915, 0.106454,
    0.203352, 0.307009, 0.409805, 0.515625, 0.587326, 0.609345, 0.628106, 0.609345, 0.587326, 0.216423,
    0.178758, 0.179852, 0.231733, 0.245099, 0.244077, 0.231733, 0.179852, 0.178758, 0.216423, 0.244077,
    0.245099, 0.780233, 0.745405, 0.727388, 0.742578, 0.727388, 0.745405, 0.780233, 0.864805, 0.902192,
    0.909281, 0.902192, 0.864805, 0.784792, 0.778746, 0.785343, 0.778746, 0.784792, 0.824182, 0.831803,
    0.824182,
)
DLIB_PADDING = 0.25


def _dlib_five_points() -> np.ndarray:
    """MTCNN's five points on dlib's mean face: the eye centres (the mean of each eye's six
    contour points, 36-41 and 42-47), the nose tip (30) and the mouth corners (48, 54)."""
    face = np.stack([_DLIB_MEAN_FACE_X, _DLIB_MEAN_FACE_Y], axis=1)

    def at(landmark: int) -> np.ndarray:
        return face[landmark - 17]

    left_eye = np.mean([at(i) for i in range(36, 42)], axis=0)
    right_eye = np.mean([at(i) for i in range(42, 48)], axis=0)
    unit = np.stack([left_eye, right_eye, at(30), at(48), at(54)])
    return (unit + DLIB_PADDING) / (1 + 2 * DLIB_PADDING)


TemplateName = Literal["5pt-arcface", "5pt-dlib"]
# Each template in units of the crop's side.
TEMPLATES: dict[str, np.ndarray] = {"5pt-arcface": TEMPLATE_112 / 112.0, "5pt-dlib": _dlib_five_points()}


def template(size: int, name: TemplateName = "5pt-arcface") -> np.ndarray:
    """The template scaled to a square crop of `size` pixels."""
    if name not in TEMPLATES:
        raise ValueError(f"unknown alignment template {name!r} (known: {sorted(TEMPLATES)})")
    return TEMPLATES[name] * float(size)


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


def warp(image: Image.Image, landmarks: np.ndarray, size: int, name: TemplateName = "5pt-arcface") -> Image.Image:
    """Crop `image` so that `landmarks` land on the template of a size x size crop."""
    m = similarity_transform(landmarks, template(size, name))
    # PIL wants the inverse map: output pixel -> input pixel.
    full = np.vstack([m, [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(full)[:2]
    return image.convert("RGB").transform(
        (size, size), Image.Transform.AFFINE, tuple(inv.flatten()), resample=Image.Resampling.BILINEAR
    )
