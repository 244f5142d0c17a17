"""Development-fold tuning runs of one federated method, from the full plan's
starting model with the full plan's settings unless overridden.

    python -m fedface_lab.tuning NAME ROUNDS [key=value ...]

keys: algorithm, epochs, batch, lr, per_round, seed, eval_every, enroll_round (0/1), model (a start
other than the pretrained model), and p.<name>
for an algorithm parameter (p.margin=0.7, p.server_lr=5, p.scale=16). The
final evaluation (protocol A and B on the development folds, the only data
tuned on) is appended as one JSON line to FEDFACE_TUNING_OUT (default
docs/results/face-api/tuning.jsonl), with the CPU and kernel set it ran on, since the
pretrained model differs between host classes. The tuning tables in docs/results/<experiment>/ come from here."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from fedface_lab.bench_fedface import ExperimentPlan, start_model
from fedface_lab.dev_eval import DevEvaluator
from fedface_lab.simulate import RoundRecord, SimulationConfig, run_simulation
from fedface_lab.tuning_log import record_result


def _value(raw: str) -> Any:
    """A number, a JSON list (p.frozen='["bn_embedding.bias"]') or else the string itself."""
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def main(argv: list[str]) -> dict[str, Any]:
    name, rounds, overrides = argv[0], int(argv[1]), dict(a.split("=", 1) for a in argv[2:])
    data = Path(os.environ.get("FEDFACE_DATA", "../shared/data"))
    plan = ExperimentPlan.full(data)
    # model=PATH starts from another model (e.g. one a tuning run produced) instead of the pretrained one.
    model = Path(overrides.pop("model")) if "model" in overrides else start_model(plan, data)[0]
    algorithm = overrides.pop("algorithm", "fedface")
    params = dict(plan.params[algorithm])
    params.update({k[2:]: _value(overrides.pop(k)) for k in list(overrides) if k.startswith("p.")})
    cfg = SimulationConfig(
        model=model, data_root=data, work_dir=Path(os.environ.get("TMPDIR", "/tmp")) / "fedface-tuning" / name,
        algorithm=algorithm, devices=plan.devices, per_round=int(overrides.pop("per_round", plan.per_round)),
        rounds=rounds, concurrency=plan.concurrency, local_epochs=int(overrides.pop("epochs", plan.local_epochs)),
        batch_size=int(overrides.pop("batch", plan.batch_size)), learning_rate=float(overrides.pop("lr", plan.lr)),
        params=params, eval_every=int(overrides.pop("eval_every", rounds)), seed=int(overrides.pop("seed", 0)),
        enrollment_round=bool(int(overrides.pop("enroll_round", 0))))
    if overrides:
        raise SystemExit(f"unknown keys: {sorted(overrides)}")

    def on_round(r: RoundRecord) -> None:
        acc = f" acc {r.eval['accuracy']:.4f}" if r.eval else ""
        print(f"{name} round {r.round} ({r.seconds:.0f} s): loss {r.mean_loss_before} -> {r.mean_loss_after},"
              f" W cos {r.server_metrics.get('w_mean_offdiag_cos')}{acc}", flush=True)

    started = time.time()
    sim = run_simulation(cfg, DevEvaluator(data, rounds), on_round=on_round)
    return record_result(name, rounds, argv[2:], time.time() - started, sim["history"][-1]["eval"])


if __name__ == "__main__":
    main(sys.argv[1:])
