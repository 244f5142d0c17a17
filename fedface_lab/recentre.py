"""The pooled-photo check of `embedding_stats`:

    python -m fedface_lab.recentre NAME MODEL

re-estimates MODEL's embedding BatchNorm statistics from all client photos at
once, with the device's own code (all photos as one "device"), applies them
with the server's strategy (mean, then the variance about it), and evaluates the result on
the development folds. One federated round of every device with
`embedding_stats` computes the same statistics (the server's sample-weighted
mean of per-device moments is the pooled moment), so the two should agree;
applied to a model FedFace trained, it says what a closing statistics round
would add. Appends one JSON line to FEDFACE_TUNING_OUT like tuning.py."""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import torch

from coordinator.strategies import Accumulator, make_strategy
from device_agent.embedding_stats import embedding_stat_deltas
from fedface_common.face.checkpoint import load_model, load_numpy_state, model_to_numpy, save_model
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
    # The server's own rule, fed the pooled photos as one device's update.
    strategy = make_strategy("fedface", {"embedding_stats": True})
    acc = Accumulator()
    strategy.fold(acc, uuid.uuid4(), deltas, len(x))
    load_numpy_state(model, strategy.apply_mean_delta(model_to_numpy(model), acc))
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
