"""One line of JSON per tuning run, with the host it ran on: what fedface_lab.tuning and
fedface_lab.recentre append to FEDFACE_TUNING_OUT (default docs/results/face-api/tuning.jsonl)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fedface_lab.machine import cpu_model, float_kernels

METRICS = ("accuracy", "tar@far=0.001", "tar@far=0.0001", "auc", "feature_mean_offdiag_cos")


def record_result(name: str, rounds: int, args: list[str], wall_s: float, final: dict[str, Any]) -> dict[str, Any]:
    """Print one run's final evaluation and append it to FEDFACE_TUNING_OUT, with the host it ran on."""
    out = {"name": name, "rounds": rounds, "args": args, "wall_s": wall_s,
           **{k: final[k] for k in METRICS}, "cpu_model": cpu_model(), **float_kernels()}
    print("RESULT", json.dumps(out), flush=True)
    with Path(os.environ.get("FEDFACE_TUNING_OUT", "docs/results/face-api/tuning.jsonl")).open("a") as f:
        f.write(json.dumps(out) + "\n")
    return out
