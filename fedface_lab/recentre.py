"""The pooled-photo check of `embedding_stats`:

    python -m fedface_lab.recentre NAME MODEL

re-estimates MODEL's embedding BatchNorm statistics from all client photos at
once, with the device's own code (all photos as one "device"), applies them as
the server does (mean, then the variance about it), and evaluates the result on
the development folds. One federated round of every device with
`embedding_stats` computes the same statistics (the server's sample-weighted
mean of per-device moments is the pooled moment), so the two should agree;
applied to a model FedFace trained, it says what a closing statistics round
would add. Appends one JSON line to FEDFACE_TUNING_OUT like tuning.py."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from device_agent.embedding_stats import STAT_TENSORS, embedding_bn, embedding_stat_deltas
from fedface_common.face.checkpoint import load_model, save_model
from fedface_common.face.preprocess import normalise_uint8
from fedface_lab.centralized import client_crops
from fedface_lab.datasets import CropCache
from fedface_lab.dev_eval import DevEvaluator
from fedface_lab.tuning import record_result


def recentre(model_path: Path, data: Path, out: Path) -> Path:
    model, manifest = load_model(model_path)
    crops, _ = client_crops(data, manifest.input_size, CropCache(), None)
    x = normalise_uint8(torch.from_numpy(crops), manifest)
    deltas = embedding_stat_deltas(model, x, batch_size=256)
    bn = embedding_bn(model)
    assert bn.running_mean is not None and bn.running_var is not None
    shift = torch.from_numpy(deltas[STAT_TENSORS[0]])
    with torch.no_grad():
        bn.running_var.add_(torch.from_numpy(deltas[STAT_TENSORS[1]]) - shift * shift).clamp_(min=0)
        bn.running_mean.add_(shift)
    return save_model(out, model.eval(), manifest)


def main(argv: list[str]) -> dict[str, Any]:
    name, model_path = argv[0], Path(argv[1])
    data = Path(os.environ.get("FEDFACE_DATA", "../shared/data"))
    started = time.time()
    out_model = recentre(model_path, data, Path(os.environ.get("TMPDIR", "/tmp")) / f"recentred-{name}.safetensors")
    final = DevEvaluator(data, 0)(out_model, 0)
    return record_result(name, 0, [f"recentre {model_path}"], time.time() - started, final)


if __name__ == "__main__":
    main(sys.argv[1:])
