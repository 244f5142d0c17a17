"""Fixed crop for photos that are already aligned (LFW deep-funneled, 250x250).

Deep-funneled LFW images have every face at about the same place, so running
a detector on them adds cost and occasional failures (a second face nearer
the centre, a missed profile) for no gain. A fixed crop puts the faces close
to the ArcFace template instead.

Calibration (method and measured numbers, rerunnable with this package's detector):
  - MTCNNDetector() with default parameters on `<Name>_0001.jpg` of 50
    identities drawn from protocol/clients.txt (numpy default_rng(0), choice
    without replacement); for each, the face whose box centre is nearest the
    image centre. All 50 had a detection.
  - Mean landmarks in 250x250 pixels (std in brackets):
      left eye (104.22, 112.93) (2.46, 2.03), right eye (146.19, 111.95) (2.91, 2.24),
      nose (126.08, 136.30) (5.90, 4.18),
      left mouth (107.54, 158.67) (3.65, 4.50), right mouth (145.47, 157.74) (3.50, 4.57).
  - Least-squares scale + translation (no rotation: the full similarity fit
    has a 1.2 degree rotation, not worth resampling for) from the mean onto
    TEMPLATE_112: scale 0.85323, translation (-51.397, -43.727). Residual of
    the mean at 112 px: 1.2, 0.35, 0.84, 1.39, 2.4 px per landmark.
  - Per image, the fixed crop leaves eyes 2.6 px (mean; 90th percentile 4.8 px)
    from the template at 112 px, all five landmarks 3.9 px.
  - Inverting the map gives the square source box below (side 112 / 0.85323).
"""

from __future__ import annotations

from PIL import Image

CALIBRATION_SIZE = 250
# (left, top, right, bottom) in a 250x250 deep-funneled image.
CROP_BOX_250 = (60.238, 51.248, 191.504, 182.514)


def aligned_crop(image: Image.Image, size: int) -> Image.Image:
    """Calibrated fixed crop of an already-aligned face photo, resized to size x size RGB.

    Images of another size are assumed to be the same framing rescaled, so the
    box is scaled with them.
    """
    width, height = image.size
    sx, sy = width / CALIBRATION_SIZE, height / CALIBRATION_SIZE
    left, top, right, bottom = CROP_BOX_250
    box = (left * sx, top * sy, right * sx, bottom * sy)
    # resize(box=...) crops with sub-pixel precision and filters in one pass.
    return image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR, box=box)
