"""`fedface verify` with dlib's network on LFW photos: the decision follows the cosine and the threshold,
and every case without a decision (unreadable photo, no face, no threshold) exits 2 saying why.

dlib's cosines run high: on the development images the impostor pairs' threshold at FAR 1e-3 is about
0.93, same-person pairs of clear photos score above 0.95 and different people about 0.85-0.88."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fedface_cli.main import app
from fedface_common.face.checkpoint import decode_model, save_model
from fedface_lab.model_cache import face_api_model_path

SAME = ("Akhmed_Zakayev/Akhmed_Zakayev_0001.jpg", "Akhmed_Zakayev/Akhmed_Zakayev_0003.jpg")
DIFFERENT = ("Abel_Pacheco/Abel_Pacheco_0001.jpg", "Akhmed_Zakayev/Akhmed_Zakayev_0001.jpg")
THRESHOLD = 0.92  # between the two, with room on both sides


@pytest.fixture(scope="module")
def dlib_model() -> Path:
    path = face_api_model_path()
    if not path.is_file():
        pytest.skip(f"dlib's network is not at {path}: `make install` (or `fedface models import face-api`)")
    torch.set_num_threads(1)
    return path


@pytest.fixture
def lfw(data_root: Path) -> Path:
    return data_root / "lfw" / "lfw-deepfunneled"


def _verify(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["verify", *args])
    return result.exit_code, result.stdout, result.stderr


def test_same_and_different_people(dlib_model: Path, lfw: Path) -> None:
    code, out, _ = _verify("--model", str(dlib_model), str(lfw / SAME[0]), str(lfw / SAME[1]),
                           "--threshold", str(THRESHOLD), "--json")
    assert code == 0, out
    same = json.loads(out)
    assert same["cosine"] > 0.95 and same["same_person"] is True
    assert same["threshold"] == THRESHOLD and same["threshold_source"] == "explicit" and same["far"] is None

    code, out, _ = _verify("--model", str(dlib_model), str(lfw / DIFFERENT[0]), str(lfw / DIFFERENT[1]),
                           "--threshold", str(THRESHOLD), "--json")
    assert code == 0, out  # a "no" is an answer, not an error
    different = json.loads(out)
    assert different["cosine"] < 0.9 and different["same_person"] is False


def test_the_calibrated_threshold_decides(dlib_model: Path, lfw: Path, tmp_path: Path) -> None:
    model, manifest, extras = decode_model(dlib_model.read_bytes())
    # The thresholds measured on the full development images (`fedface models calibrate`).
    calibrated = manifest.model_copy(update={"thresholds": {"0.001": 0.9265, "0.0001": 0.9410}})
    path = save_model(tmp_path / "calibrated.safetensors", model, calibrated, extras)

    code, out, _ = _verify("--model", str(path), str(lfw / SAME[0]), str(lfw / SAME[1]))
    assert code == 0
    assert "same person" in out and "0.9265 (calibrated for FAR 0.001)" in out

    code, out, _ = _verify("--model", str(path), str(lfw / DIFFERENT[0]), str(lfw / DIFFERENT[1]),
                           "--far", "1e-4", "--json")
    assert code == 0
    verdict = json.loads(out)
    assert verdict["threshold"] == 0.9410 and verdict["far"] == 1e-4 and verdict["same_person"] is False

    # A threshold between the two cosines flips only the decision, not the exit code.
    code, out, _ = _verify("--model", str(path), str(lfw / DIFFERENT[0]), str(lfw / DIFFERENT[1]),
                           "--threshold", "0.5")
    assert code == 0 and "same person" in out and "(given)" in out


def test_a_photo_that_is_not_an_image(dlib_model: Path, lfw: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    code, out, err = _verify("--model", str(dlib_model), str(lfw / SAME[0]), str(text), "--threshold", "0.9")
    assert code == 2 and out == ""
    assert f"photo {text}: not an image" in err


def test_a_photo_without_a_face(dlib_model: Path, lfw: Path, tmp_path: Path) -> None:
    grey = tmp_path / "grey.png"
    Image.new("RGB", (320, 240), (128, 128, 128)).save(grey)
    code, _, err = _verify("--model", str(dlib_model), str(grey), str(lfw / SAME[0]), "--threshold", "0.9")
    assert code == 2 and f"photo {grey}: no face found" in err
    missing = tmp_path / "missing.jpg"
    code, _, err = _verify("--model", str(dlib_model), str(lfw / SAME[0]), str(missing), "--threshold", "0.9")
    assert code == 2 and f"photo {missing}: cannot be read" in err


def test_a_model_without_a_threshold(dlib_model: Path, lfw: Path) -> None:
    code, out, err = _verify("--model", str(dlib_model), str(lfw / SAME[0]), str(lfw / SAME[1]))
    assert code == 2 and out == ""
    assert "no threshold for FAR 0.001" in err and "fedface models calibrate" in err


def test_a_file_that_is_not_a_model(lfw: Path, tmp_path: Path) -> None:
    bogus = tmp_path / "model.safetensors"
    bogus.write_bytes(b"\x00" * 16)
    code, _, err = _verify("--model", str(bogus), str(lfw / SAME[0]), str(lfw / SAME[1]), "--threshold", "0.9")
    assert code == 2 and f"model {bogus}: not a FedFace model file" in err
