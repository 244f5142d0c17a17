"""Small slices of the face data for the lab's tests: a tiny pretraining config and the
development folds cut down to a few pairs and images."""

from __future__ import annotations

from pathlib import Path

from fedface_lab.dev_eval import DevEvaluator
from fedface_lab.pretrain import PretrainConfig


def tiny_pretrain_config(data_root: Path, out: Path) -> PretrainConfig:
    """Six CFP identities, one epoch, 32 px: seconds, and a model that embeds faces somehow."""
    return PretrainConfig(data=data_root / "cfp", out=out, input_size=32, width=0.25, embedding_dim=32, epochs=1,
                          batch_size=64, max_identities=6, progress=False, threads=1)


def slice_pairs(src: Path, dst: Path, lines_per_fold: int) -> Path:
    """The header and the first lines of each of the two 600-line folds of dev_pairs.txt."""
    rows = src.read_text().splitlines()
    body = rows[1:]
    keep = [*body[:lines_per_fold // 2], *body[300:300 + lines_per_fold // 2],
            *body[600:600 + lines_per_fold // 2], *body[900:900 + lines_per_fold // 2]]
    dst.write_text(f"2\t{lines_per_fold // 2}\n" + "\n".join(keep) + "\n")
    return dst


def slice_evaluator(data_root: Path, work: Path, final_round: int) -> DevEvaluator:
    """The development evaluation on 20 pairs per fold and the first 40 images."""
    work.mkdir(parents=True, exist_ok=True)
    pairs = slice_pairs(data_root / "protocol" / "dev_pairs.txt", work / "pairs.txt", 20)
    images = work / "images.txt"
    images.write_text("\n".join((data_root / "protocol" / "dev_images.txt").read_text().splitlines()[:40]) + "\n")
    return DevEvaluator(data_root, final_round, pairs_file=pairs, images_file=images)
