"""The demo: start from the pretrained face network (dlib's ResNet, imported from
the pinned face-api package into the model cache), run FedFace rounds with
device agents on LFW client photos, compare before and after."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fedface_lab.bench_fedface import ExperimentPlan, resnet_params
from fedface_lab.dev_eval import DevEvaluator
from fedface_lab.model_cache import cached_face_api_start
from fedface_lab.simulate import RoundRecord, SimulationConfig, run_simulation


@dataclass
class DemoConfig:
    data: Path
    # The bench's population and rounds. A small population drifts: with 50 devices, each in every
    # other round, 5 rounds pulled the network toward those 50 faces (pairs accuracy 0.9900 -> 0.9775);
    # so do more rounds at the bench's learning rate (5 rounds of 50 at lr 0.05: 0.9842).
    devices: int = 1012
    per_round: int = 50
    rounds: int = 3
    work_dir: Path = Path("fedface-data/demo")


def run_demo(cfg: DemoConfig) -> dict[str, object]:
    console = Console()
    started = time.perf_counter()
    # The experiment's start and its client and server settings.
    plan = ExperimentPlan.quick(cfg.data)
    console.rule("1. The pretrained face network (dlib's ResNet from the face-api package)")
    model, cached = cached_face_api_start(cfg.data)
    console.print(f"model: {model} ({'reused from cache' if cached else 'imported now'})")

    console.rule("2. The pretrained model on the development pairs")
    evaluator = DevEvaluator(cfg.data, cfg.rounds, all_pairs_every_eval=True)
    before = evaluator(model, 0)
    console.print(f"accuracy {before['accuracy']:.4f}")

    console.rule(f"3. {cfg.devices} device agents, {cfg.rounds} FedFace rounds of {cfg.per_round}")
    if cfg.work_dir.exists():
        shutil.rmtree(cfg.work_dir)  # a fresh coordinator and fresh devices each time

    def on_round(r: RoundRecord) -> None:
        m = r.server_metrics
        console.print(f"round {r.round}: {r.submitted}/{r.participants} updates, client loss "
                      f"{r.mean_loss_before or 0:.4f} -> {r.mean_loss_after or 0:.4f}, W mean cos "
                      f"{m.get('w_mean_offdiag_cos_after_spreadout', float('nan')):.4f}, {r.seconds:.1f} s")

    def on_serving(url: str, token: str) -> None:
        # The coordinator lives as long as the rounds run: its console shows them as they happen.
        console.print(f"operator console: [bold]{url}/console[/bold] (open it while the rounds run); "
                      f"sign in with the admin token [bold]{token}[/bold]", soft_wrap=True)

    sim = run_simulation(
        SimulationConfig(model=model, data_root=cfg.data, work_dir=cfg.work_dir, algorithm="fedface",
                         devices=cfg.devices, per_round=cfg.per_round, rounds=cfg.rounds, concurrency=2,
                         local_epochs=plan.local_epochs, batch_size=plan.batch_size, learning_rate=plan.lr,
                         params=resnet_params(cfg.devices)["fedface"]),
        evaluator, on_round=on_round, on_serving=on_serving,
    )
    after = sim["history"][-1]["eval"]

    table = Table(title="Development folds (LFW View 2 folds 1-2; no demo device is in them)")
    table.add_column("metric")
    table.add_column("pretrained", justify="right")
    table.add_column(f"after {cfg.rounds} FedFace rounds", justify="right")
    for key, label in [("accuracy", "pairs accuracy (A)"), ("tar@far=0.001", "TAR@FAR=1e-3 (B)"),
                       ("tar@far=0.0001", "TAR@FAR=1e-4 (B)"), ("auc", "ROC AUC (B)"),
                       ("feature_mean_offdiag_cos", "mean cos between identities")]:
        table.add_row(label, f"{before[key]:.4f}", f"{after[key]:.4f}")
    console.print(table)
    console.print(f"total {time.perf_counter() - started:.0f} s; coordinator and device state in {cfg.work_dir}")
    return {"before": before, "after": after, "simulation": sim}
