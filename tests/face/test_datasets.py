from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from fedface_common.face.align import TEMPLATE_112, similarity_transform
from fedface_common.face.preprocess import aligned_center_crop
from fedface_lab.datasets import (
    CropCache,
    cfp_landmarks5,
    list_cfp,
    load_crop,
    read_clients,
    read_fiducials,
    read_image_list,
    read_pairs,
)


def test_read_clients(data: Path) -> None:
    clients = read_clients(data / "protocol" / "clients.txt")
    assert clients[0] == ("Aaron_Peirsol", 4)
    assert len(clients) == 1012 and sum(n for _, n in clients) == 5171


def test_read_pairs(data: Path) -> None:
    pairs = read_pairs(data / "protocol" / "dev_pairs.txt")
    assert len(pairs) == 1200
    first = pairs[0]
    assert (first.a, first.b, first.same, first.fold) == (
        "Abel_Pacheco/Abel_Pacheco_0001.jpg", "Abel_Pacheco/Abel_Pacheco_0004.jpg", True, 0)
    assert [p.same for p in pairs[299:301]] == [True, False]
    assert pairs[600].fold == 1 and pairs[600].same
    lfw = data / "lfw" / "lfw-deepfunneled"
    assert all((lfw / p.a).exists() and (lfw / p.b).exists() for p in pairs[:5] + pairs[300:305])


def test_read_image_list(data: Path, tmp_path: Path) -> None:
    items = read_image_list(data / "protocol" / "dev_images.txt")
    # The data README says 2,388 lines; the file has 1,816 (844 identities, 3,148
    # genuine pairs, 1.65M pairs in all, matching the README's pair counts).
    assert len(items) == 1816 and len({i for i, _ in items}) == 844
    assert items[0] == ("Abdel_Madi_Shabneh", "Abdel_Madi_Shabneh/Abdel_Madi_Shabneh_0001.jpg")
    bare = tmp_path / "list.txt"
    bare.write_text("Bob/Bob_0001.jpg\n\nAl/Al_0002.jpg\n")
    assert read_image_list(bare) == [("Bob", "Bob/Bob_0001.jpg"), ("Al", "Al/Al_0002.jpg")]


def test_cfp_frontal_alignment_puts_eyes_on_template(data: Path, tmp_path: Path) -> None:
    item = next(i for i in list_cfp(data / "cfp", max_identities=1) if i.pose == "frontal")
    five = cfp_landmarks5(read_fiducials(item.fiducials))
    assert five[0, 0] < five[1, 0] and five[3, 0] < five[4, 0]  # image-left first
    m = similarity_transform(five, TEMPLATE_112)
    mapped = five @ m[:, :2].T + m[:, 2]
    # The annotated eye (mean of its 6 contour points) lands within a few pixels
    # of the template eye; all five points within 6 px at 112 px.
    assert np.linalg.norm(mapped - TEMPLATE_112, axis=1).max() < 6.0

    cache = CropCache(tmp_path)
    crop = load_crop(item.image, "cfp", 112, cache, item.fiducials, "frontal")
    assert crop.size == (112, 112)
    again = load_crop(item.image, "cfp", 112, cache, item.fiducials, "frontal")
    assert np.array_equal(np.asarray(crop), np.asarray(again))
    assert len(list((tmp_path / "crops").rglob("*.png"))) == 1
    # Eyes are darker than the skin between them: a crude check the crop is a face.
    g = np.asarray(crop.convert("L"), dtype=float)
    eye = g[49:55, 35:42].mean()
    cheek = g[60:66, 50:62].mean()
    assert eye < cheek


def test_profile_alignment_and_center_crop(data: Path, tmp_path: Path) -> None:
    item = next(i for i in list_cfp(data / "cfp", max_identities=1) if i.pose == "profile")
    crop = load_crop(item.image, "cfp", 64, CropCache(tmp_path), item.fiducials, "profile")
    assert crop.size == (64, 64)
    lfw = data / "lfw" / "lfw-deepfunneled" / "Abel_Pacheco" / "Abel_Pacheco_0001.jpg"
    with Image.open(lfw) as im:
        assert aligned_center_crop(im, 48).size == (48, 48)
