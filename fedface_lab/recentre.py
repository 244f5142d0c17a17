"""The pooled-photo check of `embedding_stats` (and `embedding_lda_dims`):

    python -m fedface_lab.recentre NAME MODEL [LDA_DIMS [SHRINKAGE [mirror]]]

re-estimates MODEL's embedding BatchNorm statistics from all client photos,
without HTTP: each identity's moments come from the device's own code and are
folded into the server's strategy, which applies them (mean, then the variance
about it; with LDA_DIMS, the discriminant as well). It evaluates the result on
the development folds. One federated round of every device computes the same
sums, so the two should agree; applied to a model FedFace or the centralized
fine-tuning trained, it says what a closing statistics round would add there.
Appends one JSON line to FEDFACE_TUNING_OUT like tuning.py."""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from coordinator.strategies import Accumulator, make_strategy
from device_agent.embedding_stats import discriminant_moments, embedding_stat_deltas
from fedface_common.face.checkpoint import load_model, load_numpy_state, model_to_numpy, save_model
from fedface_common.face.preprocess import normalise_uint8
from fedface_lab.centralized import client_crops
from fedface_lab.datasets import CropCache
from fedface_lab.dev_eval import DevEvaluator
from fedface_lab.tuning_log import record_result


def recentre(model_path: Path, data: Path, out: Path, lda_dims: int | None = None,
             lda_shrinkage: float = 0.1, names: list[str] | None = None, lda_mirror: bool = False) -> Path:
    """MODEL with the statistics of the client identities `names` (all of them by default) applied."""
    model, manifest = load_model(model_path)
    crops, labels = client_crops(data, manifest, CropCache(), None, names)
    x = normalise_uint8(torch.from_numpy(crops), manifest)
    # The discriminant replaces the embedding BN outright, so it needs no re-centring first.
    params = ({"embedding_stats": True} if lda_dims is None
              else {"embedding_lda_dims": lda_dims, "embedding_lda_shrinkage": lda_shrinkage,
                    "embedding_lda_mirror": lda_mirror})
    strategy = make_strategy("fedface", params)
    acc = Accumulator()
    # The server's own rule, fed one update per identity as its device would send it.
    for k in np.unique(labels):
        photos = x[torch.from_numpy(labels == k)]
        moments = (embedding_stat_deltas(model, photos, batch_size=256) if lda_dims is None
                   else discriminant_moments(model, photos, 256, lda_mirror))
        strategy.fold(acc, uuid.uuid4(), moments, len(photos))
    load_numpy_state(model, strategy.aggregate_weights(model_to_numpy(model), acc))
    return save_model(out, model.eval(), manifest)


def main(argv: list[str]) -> dict[str, Any]:
    name, model_path = argv[0], Path(argv[1])
    lda_dims = int(argv[2]) if len(argv) > 2 else None
    shrinkage = float(argv[3]) if len(argv) > 3 else 0.1
    if len(argv) > 4 and argv[4] != "mirror":
        raise SystemExit(f"the fifth argument can only be 'mirror', got {argv[4]!r}")
    data = Path(os.environ.get("FEDFACE_DATA", "../shared/data"))
    started = time.time()
    out_model = recentre(model_path, data, Path(os.environ.get("TMPDIR", "/tmp")) / f"recentred-{name}.safetensors",
                         lda_dims, shrinkage, lda_mirror=len(argv) > 4)
    final = DevEvaluator(data, 0)(out_model, 0)
    return record_result(name, 0, ["recentre", str(model_path), *argv[2:]], time.time() - started, final)


if __name__ == "__main__":
    main(sys.argv[1:])
