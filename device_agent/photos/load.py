"""Decode a photo file into an upright RGB PIL image, or say why not.

Phones hand us anything: JPEGs with EXIF rotation, PNGs with transparency,
16-bit greyscale TIFFs, CMYK JPEGs, truncated downloads, files that only
carry an image extension. Every failure becomes a reason code, never an
exception.
"""

from __future__ import annotations

import io
import warnings
from enum import StrEnum
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


class SkipReason(StrEnum):
    """Why a file produced no face crop. The set is fixed: reports and the UI key on these values."""

    UNREADABLE = "unreadable"  # the file could not be read at all (missing, permission, a directory)
    NOT_AN_IMAGE = "not_an_image"  # bytes are not a decodable image (corrupt, truncated, text, unknown format)
    TOO_LARGE = "too_large"  # file or pixel count beyond the limits (decompression-bomb guard)
    TOO_SMALL = "too_small"  # image, or the face in it, too small to give a usable crop
    NO_FACE = "no_face"  # the detector found no face
    ERROR = "error"  # unexpected internal failure; logged, so one bad file never stops a folder


class LoadError(Exception):
    """A photo could not be turned into an RGB image."""

    def __init__(self, reason: SkipReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


def load_rgb(path: Path, max_file_bytes: int = 64 << 20, max_pixels: int = 60_000_000) -> Image.Image:
    """The photo at `path`, EXIF orientation applied, as an RGB image. Raises LoadError."""
    try:
        size = path.stat().st_size
        if size > max_file_bytes:
            raise LoadError(SkipReason.TOO_LARGE, f"file is {size} bytes (limit {max_file_bytes})")
        data = path.read_bytes()
    except OSError as exc:
        raise LoadError(SkipReason.UNREADABLE, f"{type(exc).__name__}: {exc}") from exc
    return decode_rgb(data, max_pixels)


def decode_rgb(data: bytes, max_pixels: int = 60_000_000) -> Image.Image:
    """Decode image bytes to an upright RGB image. Raises LoadError."""
    try:
        with warnings.catch_warnings():
            # PIL warns, then raises, on huge images; we check the size ourselves first.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data))
            width, height = image.size  # header only, nothing decoded yet
            if width * height > max_pixels:
                raise LoadError(SkipReason.TOO_LARGE, f"{width}x{height} pixels (limit {max_pixels})")
            image.load()
    except LoadError:
        raise
    except Image.DecompressionBombError as exc:
        raise LoadError(SkipReason.TOO_LARGE, str(exc)) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        # PIL signals corrupt, truncated and unknown data with all of these.
        raise LoadError(SkipReason.NOT_AN_IMAGE, f"{type(exc).__name__}: {exc}") from exc
    try:
        # Phones store pixels as the sensor saw them and the rotation in EXIF.
        upright = ImageOps.exif_transpose(image)
        if upright is not None:
            image = upright
    except Exception:
        pass  # broken EXIF is common; keep the pixels as stored rather than reject the photo
    try:
        return to_rgb(image)
    except (OSError, ValueError) as exc:
        raise LoadError(SkipReason.NOT_AN_IMAGE, f"cannot convert mode {image.mode}: {exc}") from exc


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # 16/32-bit and float greyscale: PIL's own conversion clips at 255, so
        # stretch the actual range onto 0..255 instead.
        arr = np.asarray(image, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.nan_to_num(scaled).astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels carry arbitrary colours; show them on white as a viewer would.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV
