"""MTCNN face detection cascade: image pyramid -> PNet proposals -> RNet -> ONet.

Reimplemented from facenet-pytorch 2.6.0, `models/utils/detect_face.py`
(MIT licence, Copyright (c) 2019 Timothy Esler), itself a port of
davidsandberg/facenet's MTCNN. Differences from that reference, on purpose:
- no torchvision: NMS is our own (numpy, below);
- one image at a time (a phone processes one photo at a time);
- stage-2/3 crops that cross the image border are zero-padded (as the
  original MTCNN does) instead of clipped, so they keep their aspect ratio and
  boxes are never dropped silently;
- coordinates are returned 0-based: box (x1, y1, x2, y2) in pixel-edge units,
  landmarks in the same frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from device_agent.photos.mtcnn import ONet, PNet, RNet, load_mtcnn

NmsMethod = Literal["union", "min"]


@dataclass(frozen=True)
class Detections:
    """Faces found in one image, most confident first."""

    boxes: np.ndarray  # (n, 4) float: x1, y1, x2, y2
    probs: np.ndarray  # (n,) float in [0, 1]
    landmarks: np.ndarray  # (n, 5, 2) float (x, y): left eye, right eye, nose, left mouth, right mouth

    def __len__(self) -> int:
        return len(self.probs)

    @staticmethod
    def empty() -> Detections:
        return Detections(np.zeros((0, 4)), np.zeros((0,)), np.zeros((0, 5, 2)))


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, method: NmsMethod = "union") -> np.ndarray:
    """Greedy non-maximum suppression. Returns kept indices, highest score first.

    A box is dropped when its overlap with an already kept box exceeds
    `threshold`; overlap is intersection over union ("union") or over the
    smaller area ("min", used by MTCNN's last stage to drop boxes nested in
    a bigger face). Boxes are (x1, y1, x2, y2) in continuous coordinates.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError("boxes and scores differ in length")
    x1, y1, x2, y2 = boxes.T
    area = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        iw = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        ih = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = iw * ih
        denom = np.minimum(area[i], area[rest]) if method == "min" else area[i] + area[rest] - inter
        # Degenerate (zero-area) boxes overlap nothing.
        overlap = np.divide(inter, denom, out=np.zeros_like(inter), where=denom > 0)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Grow boxes (n, >=4) to squares around the same centre (the nets expect square crops)."""
    out = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + 0.5 * (w - side)
    out[:, 1] = boxes[:, 1] + 0.5 * (h - side)
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Apply the nets' box regression (offsets in units of box size)."""
    out = boxes.copy()
    w = (boxes[:, 2] - boxes[:, 0])[:, None]
    h = (boxes[:, 3] - boxes[:, 1])[:, None]
    out[:, 0:4] = boxes[:, 0:4] + reg[:, 0:4] * np.hstack([w, h, w, h])
    return out


def _normalise(x: torch.Tensor) -> torch.Tensor:
    # The networks were trained on (pixel - 127.5) / 128.
    return (x - 127.5) * 0.0078125


class MTCNNDetector:
    """MTCNN with the standard parameters; defaults as facenet-pytorch."""

    def __init__(
        self,
        min_face_size: int = 20,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
        nets: tuple[PNet, RNet, ONet] | None = None,
    ) -> None:
        if min_face_size < 12:
            raise ValueError("min_face_size must be >= 12 (PNet's window)")
        if not 0.0 < factor < 1.0:
            raise ValueError("factor must be in (0, 1)")
        self.min_face_size = min_face_size
        self.thresholds = thresholds
        self.factor = factor
        self.pnet, self.rnet, self.onet = nets if nets is not None else load_mtcnn()

    def scales(self, height: int, width: int) -> list[float]:
        """Pyramid scales: the smallest face of interest maps to PNet's 12 px window first."""
        scale = 12.0 / self.min_face_size
        side = min(height, width) * scale
        out: list[float] = []
        while side >= 12:
            out.append(scale)
            scale *= self.factor
            side *= self.factor
        return out

    @torch.inference_mode()
    def detect(self, image: Image.Image) -> Detections:
        """Detect faces in an RGB PIL image."""
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        boxes = self._stage1(rgb)
        if len(boxes):
            boxes = self._stage2(rgb, boxes)
        if not len(boxes):
            return Detections.empty()
        return self._stage3(rgb, boxes)

    def _stage1(self, rgb: Image.Image) -> np.ndarray:
        """PNet over the pyramid. Returns square candidate boxes (n, 5): x1, y1, x2, y2, score."""
        width, height = rgb.size
        full = torch.from_numpy(np.asarray(rgb, dtype=np.float32).copy()).permute(2, 0, 1)[None]
        found: list[np.ndarray] = []
        # Each pyramid level has its own size, so levels run one by one; the
        # largest level dominates the cost, so batching them would gain little.
        for scale in self.scales(height, width):
            size = (int(height * scale + 1), int(width * scale + 1))
            level = _normalise(F.interpolate(full, size=size, mode="area"))
            reg, prob = self.pnet(level)
            cand = self._proposals(reg[0].numpy(), prob[0, 1].numpy(), scale)
            if len(cand):
                found.append(cand[nms(cand[:, :4], cand[:, 4], 0.5)])
        if not found:
            return np.zeros((0, 5))
        cand = np.concatenate(found)
        cand = cand[nms(cand[:, :4], cand[:, 4], 0.7)]
        return _square(_regress(cand[:, :5], cand[:, 5:9]))

    def _proposals(self, reg: np.ndarray, prob: np.ndarray, scale: float) -> np.ndarray:
        """PNet map cells above threshold -> boxes (n, 9): x1, y1, x2, y2, score, 4 regression offsets."""
        stride, cell = 2, 12
        ys, xs = np.nonzero(prob >= self.thresholds[0])
        if not len(ys):
            return np.zeros((0, 9))
        # Each output cell sees a 12x12 window at (stride * cell index) in the
        # scaled image; map it back to the original image. (The reference's
        # 1-based "+1" is dropped: our coordinates are 0-based.)
        x1 = np.floor(stride * xs / scale)
        y1 = np.floor(stride * ys / scale)
        x2 = np.floor((stride * xs + cell) / scale)
        y2 = np.floor((stride * ys + cell) / scale)
        return np.column_stack([x1, y1, x2, y2, prob[ys, xs], reg[:, ys, xs].T])

    @staticmethod
    def _crops(rgb: Image.Image, boxes: np.ndarray, side: int) -> torch.Tensor:
        """Crop each box (zero-padded where it leaves the image), area-resize to side x side."""
        patches = []
        for x1, y1, x2, y2 in np.trunc(boxes[:, :4]).astype(np.int64):
            # PIL fills the part of a crop outside the image with black.
            patch = rgb.crop((int(x1), int(y1), int(x2), int(y2))).resize((side, side), Image.Resampling.BOX)
            patches.append(np.asarray(patch, dtype=np.float32))
        return _normalise(torch.from_numpy(np.stack(patches)).permute(0, 3, 1, 2))

    def _stage2(self, rgb: Image.Image, boxes: np.ndarray) -> np.ndarray:
        """RNet: rescore and refine candidates."""
        boxes = boxes[(boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)]
        if not len(boxes):
            return boxes
        reg, prob = self.rnet(self._crops(rgb, boxes, 24))
        score = prob[:, 1].numpy()
        ok = score > self.thresholds[1]
        boxes = np.column_stack([boxes[ok, :4], score[ok]])
        reg_np = reg.numpy()[ok]
        keep = nms(boxes[:, :4], boxes[:, 4], 0.7)
        return _square(_regress(boxes[keep], reg_np[keep]))

    def _stage3(self, rgb: Image.Image, boxes: np.ndarray) -> Detections:
        """ONet: final score, box and five landmarks."""
        boxes = boxes[(boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)]
        if not len(boxes):
            return Detections.empty()
        reg, points, prob = self.onet(self._crops(rgb, boxes, 48))
        score = prob[:, 1].numpy()
        ok = score > self.thresholds[2]
        if not ok.any():
            return Detections.empty()
        boxes = np.trunc(boxes[ok, :4])  # the frame the crops were taken in
        pts = points.numpy()[ok]
        w = (boxes[:, 2] - boxes[:, 0])[:, None]
        h = (boxes[:, 3] - boxes[:, 1])[:, None]
        # Landmarks are fractions of the crop: x1..x5 then y1..y5.
        marks = np.stack([boxes[:, 0:1] + w * pts[:, :5], boxes[:, 1:2] + h * pts[:, 5:]], axis=-1)
        final = _regress(boxes, reg.numpy()[ok])
        keep = nms(final, score[ok], 0.7, method="min")
        return Detections(final[keep], score[ok][keep], marks[keep])
