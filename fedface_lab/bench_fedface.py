"""`fedface bench fedface`: the paper's experiment on real faces through the
real system.

the pretrained network (dlib's ResNet imported from the pinned face-api package,
or for `--start pretrain` a MobileFaceNet pretrained on CFP, cached) -> evaluate
it -> run fedface, fedavg and fedface-private
from the same start for the same rounds (one simulation each, per seed) ->
centralized fine-tuning on the pooled client photos (the upper bound) ->
evaluate everything on the development folds. Two baselines of no training at
all (one statistics round of every device: re-centring, and the discriminant
transform of coordinator/strategies/discriminant.py) say what FedFace's training
adds; the same discriminant round also runs as a closing step after FedFace's
training (and fedface-private's), from each seed's final model; the centralized
model gets the same discriminant transform (pooled) so that the upper bound is
not held to a weaker recipe than the federated rows."""

from __future__ import annotations

import math
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.privacy.accountant import noise_for_epsilon
from fedface_lab.centralized import CentralizedConfig, centralized_finetune
from fedface_lab.datasets import read_clients
from fedface_lab.dev_eval import DevEvaluator
from fedface_lab.machine import float_kernels, machine_info
from fedface_lab.model_cache import cached_face_api_start, cached_pretrain
from fedface_lab.pretrain import PretrainConfig
from fedface_lab.recentre import recentre
from fedface_lab.simulate import Evaluator, RoundRecord, SimulationConfig, run_simulation

METHODS = ("fedface", "fedavg", "fedface-private")
HEADLINE = ("accuracy", "tar@far=0.001", "tar@far=0.0001", "auc")


@dataclass(frozen=True)
class BenchRun:
    """One row of the experiment: a federated method with its parameters, run with each of `seeds`."""

    name: str
    method: str
    params: dict[str, Any]
    seeds: tuple[int, ...]
    attackers: float = 0.0  # the share of devices sending scaled updates
    min_devices: int = 1  # the round's quorum (a secure round's fewest survivors it unmasks)


@dataclass
class ExperimentPlan:
    """Everything that defines a run; `full()` and `quick()` are the two published plans."""

    name: str
    # None: start from dlib's network imported from the face-api package; else pretrain this on CFP.
    pretrain: PretrainConfig | None
    devices: int
    per_round: int
    rounds: int
    seeds: tuple[int, ...]
    eval_every: int
    # Tuned on the development folds (docs/results): a device holds ~5 photos,
    # so 2 local epochs of batch 16 are a handful of SGD steps per round.
    local_epochs: int = 2
    batch_size: int = 16
    lr: float = 0.05
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    concurrency: int = 2
    centralized_epochs: int = 10
    # The discriminant round: dimensions kept and shrinkage, picked on the development folds
    # (docs/results/mobilefacenet/tuning-amd-avx512.jsonl: 32 to 128 dimensions, shrinkage 0.03 to 0.3; 64 and
    # 0.1 have the best AUC and a TAR@FAR=1e-3 within binomial noise of the best).
    lda_dims: int = 64
    lda_shrinkage: float = 0.1
    # Mirror images as more photos of each owner: higher A, AUC and TAR@FAR=1e-3 at each of the five
    # settings tried on the Xeon class (docs/results/mobilefacenet/tuning-xeon.jsonl, `pooled-lda*-mirror`).
    lda_mirror: bool = True
    # The no-training baselines to run (each is one round of every device, ~3 minutes here).
    statistics_rows: tuple[str, ...] = ("recentred", "lda")
    # Methods whose final model (each seed's) also gets the discriminant round as a closing step, the
    # `METHOD+lda` rows. Closing, because training after the discriminant undid it (README, tuning).
    closing_lda: tuple[str, ...] = ("fedface", "fedface-private")
    # The centralized rows train on the first N client identities; None is all of them, which is
    # the full population every published plan's devices hold. Small plans (tests) name fewer.
    centralized_identities: int | None = None
    centralized_lr: float = 0.01
    centralized_scale: float = 64.0  # the CosFace scale s of the centralized run
    # The discriminant of the centralized model (centralized+lda): only for plans with lda rows.
    centralized_lda: bool = True
    # Compact update encodings (update_encoding) to run FedFace with, beside its float32 rows.
    encodings: tuple[str, ...] = ()
    # FedFace with this share of devices sending updates scaled by attack_scale, with the coordinator's
    # default bounds and with them off (first seed only): what one hostile device in ten can do.
    attackers: float = 0.0
    attack_scale: float = 100.0
    # Which federated methods run (each with every seed), and whether the centralized row does.
    methods: tuple[str, ...] = METHODS
    centralized: bool = True
    # fedface-private with secure aggregation (each update clipped to secagg_clip) beside the plain round with
    # the same clip and cap, and with DP at these epsilons over the whole run (at dp_delta; the noise
    # multiplier from the accountant for the plan's population, devices per round and rounds), each update
    # clipped to dp_clip (first seed only).
    secagg: bool = False
    dp_epsilons: tuple[float, ...] = ()
    dp_delta: float = 1e-5
    # The full plan's fedface-private updates (dlib's network, last 4 blocks + fc, lr 0.05) have a median L2
    # norm of 0.25 in their first round, and the coordinator's default bound was 0.75 (3x that): DP clips at
    # the median, as Andrew et al.'s quantile 0.5 would settle on; secure aggregation at the bound the same
    # round without it uses.
    dp_clip: float = 0.25
    secagg_clip: float = 0.75
    # Secure aggregation weighs each update by min(photos, cap) / cap: the cap is 4x the population's median
    # photo count (3), the sample cap the coordinator's adaptive default sets from the same counts.
    secagg_max_weight: int = 12
    # DP with the noise added by the devices under secure aggregation, at these epsilons; each device's share
    # is sized for the quorum that this dropout leaves of a round's devices.
    distributed_dp_epsilons: tuple[float, ...] = ()
    distributed_dropout: float = 0.1

    @staticmethod
    def full(data: Path) -> ExperimentPlan:
        """From dlib's network: 1,012 devices, 3 rounds of 50, two seeds, and FedFace with int8 updates."""
        return replace(ExperimentPlan.full_pretrained(data), name="full", pretrain=None,
                       params=resnet_params(1012), statistics_rows=(), closing_lda=(), centralized_lda=False,
                       encodings=("int8",), attackers=0.1, **RESNET_TRAINING)

    @staticmethod
    def quick(data: Path) -> ExperimentPlan:
        """The full plan with one seed, without the int8 and attacker rows, and the centralized fine-tune on the
        first 300 client identities' photos (the whole population's takes some 14 minutes alone here)."""
        return replace(ExperimentPlan.full(data), name="quick", seeds=(0,), encodings=(), attackers=0.0,
                       centralized_identities=300)

    @staticmethod
    def privacy(data: Path) -> ExperimentPlan:
        """fedface-private as in the full plan (seed 0), with secure aggregation and with DP at three budgets."""
        return replace(ExperimentPlan.full(data), name="privacy", seeds=(0,), encodings=(), attackers=0.0,
                       methods=("fedface-private",), centralized=False, secagg=True, dp_epsilons=(1.0, 4.0, 8.0),
                       distributed_dp_epsilons=(8.0,))

    @staticmethod
    def full_pretrained(data: Path) -> ExperimentPlan:
        """From a MobileFaceNet pretrained on CFP (the path for operators who pretrain on their own data)."""
        return ExperimentPlan(
            name="full-pretrained", devices=1012, per_round=100, rounds=15, seeds=(0, 1), eval_every=5,
            pretrain=full_pretrain(data), params=default_params(1012),
        )

    @staticmethod
    def quick_pretrained(data: Path) -> ExperimentPlan:
        """The full plan's pretrained model (same cache entry) and population,
        with half the devices per round, 10 rounds and one seed: a smaller model
        of its own learned too little for the comparison to mean anything. No
        no-training baseline, and FedFace's closing discriminant round only, to stay
        within 15 minutes."""
        return ExperimentPlan(
            name="quick-pretrained", devices=1012, per_round=50, rounds=10, seeds=(0,), eval_every=5,
            pretrain=full_pretrain(data), params=default_params(1012), centralized_epochs=5,
            statistics_rows=(), closing_lda=("fedface",),
        )


def full_pretrain(data: Path) -> PretrainConfig:
    """All of CFP, 64 px, MobileFaceNet width 0.5, 128-d, 10 epochs of CosFace."""
    return PretrainConfig(data=data / "cfp", out=Path("unused"), input_size=64, width=0.5, embedding_dim=128,
                          epochs=10, batch_size=128, lr=0.1, seed=0)


def small_pretrain(data: Path) -> PretrainConfig:
    """48 px, 6 epochs: about a minute, for the demo, which shows the system rather than the science."""
    return replace(full_pretrain(data), input_size=48, epochs=6)


def default_params(population: int) -> dict[str, dict[str, Any]]:
    """Per-method algorithm parameters. R(W) is a mean over the n(n-1) ordered
    pairs, so each row's gradient shrinks like 1/n: the spreadout lr is scaled
    by n-1 to keep the step per row the same at any population. The factor
    0.05 was picked on the development folds (10 at n=200; 100 spread W in one
    round and the clients' targets moved out of reach). fedface-private's
    anchor weight 1 too (docs/results/mobilefacenet/tuning.jsonl: 0 bunched identities, 10
    diverged)."""
    return {
        "fedface": {"margin": 0.9, "tau": 0.3, "spreadout_steps": 10, "spreadout_lr": 0.05 * (population - 1)},
        "fedavg": {"margin": 0.9},
        "fedface-private": {"k_negatives": 64, "scale": 32.0, "cosface_margin": 0.35, "anchor": 1.0},
    }


# dlib's network on the devices, chosen on the development folds (docs/results/face-api/tuning.md).
# The centralized baseline fine-tunes the same layers with a CosFace softmax over the 1,012 client
# identities for one epoch at lr 1e-4: both recipes tried (all layers at lr 1e-3, the devices' layers at
# lr 1e-4) ended below the pretrained network on the development folds (tuning.md).
# The devices' step and the length of training: FedFace gains at low FAR early and then drifts. 3 rounds of
# 50 at lr 0.05 gained on every metric on both seeds; 5 rounds at lr 0.05 lost half a point of pairs accuracy,
# 5 at lr 0.03 lost 0.8 on seed 1, and 10 rounds of 100 at lr 0.015 lost a point by the tenth (tuning.md).
RESNET_TRAINING: dict[str, Any] = {"per_round": 50, "rounds": 3, "eval_every": 3, "local_epochs": 1,
                                   "batch_size": 16, "lr": 0.05, "centralized_epochs": 1, "centralized_lr": 1e-4}
RESNET_FROZEN = ["stem.", *(f"blocks.{i}." for i in range(10))]


def resnet_params(population: int) -> dict[str, dict[str, Any]]:
    """default_params with the devices training only the last stages of dlib's network (RESNET_FROZEN).
    fedface-private's CosFace loss against 64 public centres moves the network far more per step than the
    positive loss: in 3 rounds at the plan's lr its server taking a fifth of the mean delta ended 3 points of
    TAR@FAR=1e-3 below FedFace, a tenth of it 1.4 points, a twentieth 0.7 (server_lr 0.05; tuning.md)."""
    params = {method: {**p, "frozen": list(RESNET_FROZEN)} for method, p in default_params(population).items()}
    params["fedface-private"]["server_lr"] = 0.05
    return params


def start_model(plan: ExperimentPlan, data: Path, models_dir: Path | None = None) -> tuple[Path, bool]:
    """The plan's starting model file and whether it came from the cache."""
    if plan.pretrain is None:
        return cached_face_api_start(data, models_dir)
    return cached_pretrain(plan.pretrain, models_dir)


def _mean_std(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0}


def _row(method: str, evals: list[dict[str, Any]], rounds: int, wall_s: float,
         bytes_up: float | None) -> dict[str, Any]:
    row: dict[str, Any] = {"method": method, "rounds": rounds, "wall_s": round(wall_s, 1),
                           "bytes_up_per_device_per_round": bytes_up, "seeds": len(evals)}
    for key in HEADLINE:
        stats = _mean_std([e[key] for e in evals])
        row[key], row[f"{key}_std"] = stats["mean"], stats["std"]
        row[f"{key}_per_seed"] = [e[key] for e in evals]
    row["feature_mean_offdiag_cos"] = _mean_std([e["feature_mean_offdiag_cos"] for e in evals])["mean"]
    return row


def run_experiment(plan: ExperimentPlan, data: Path, work_dir: Path, log: Callable[[str], None] = print,
                   evaluator_for: Callable[[int], Evaluator] | None = None,
                   models_dir: Path | None = None) -> dict[str, Any]:
    """`evaluator_for(final_round)` evaluates a model (the development folds unless a test slices
    them); `models_dir` holds the pretrained-model cache (the user cache unless given)."""
    started = time.perf_counter()
    evaluator_for = evaluator_for or (lambda final_round: DevEvaluator(data, final_round))
    evaluator = evaluator_for(plan.rounds)

    t0 = time.perf_counter()
    model, cached = start_model(plan, data, models_dir)
    pretrain_s = time.perf_counter() - t0
    log(f"pretrained model {model} ({'cached' if cached else f'made in {pretrain_s:.0f} s'})")
    pre_eval = evaluator(model, plan.rounds)  # the full metric set
    rows = [_row("pretrained", [pre_eval], 0, pretrain_s, None)]
    log(f"pretrained: {_fmt(pre_eval)}")

    central_rows: list[dict[str, Any]] = []
    if plan.centralized:
        central_rows = _centralized_rows(plan, data, work_dir, model, evaluator, log)

    fedface_params = plan.params.get("fedface", {})
    lda_params = {**fedface_params, "embedding_lda_dims": plan.lda_dims,
                  "embedding_lda_shrinkage": plan.lda_shrinkage, "embedding_lda_mirror": plan.lda_mirror}
    baselines: dict[str, dict[str, Any]] = {"recentred": {**fedface_params, "embedding_stats": True},
                                            "lda": lda_params}

    def statistics_round(start: Path, name: str, params: dict[str, Any]) -> tuple[dict[str, Any], float, float]:
        return _statistics_round(plan, start, data, work_dir / name, params, evaluator_for(0))

    for name in plan.statistics_rows:
        ev, wall, up = statistics_round(model, name, baselines[name])
        rows.append(_row(name, [ev], 0, wall, up))
        log(f"{name}: {_fmt(rows[-1])}")

    curves: dict[str, dict[str, list[Any]]] = {}
    # (row, algorithm, params, seeds): the methods, then FedFace with each compact update encoding
    # (first seed only: what the encoding costs in accuracy and saves in bytes).
    runs = [BenchRun(m, m, plan.params.get(m, {}), plan.seeds) for m in plan.methods]
    runs += [BenchRun(f"fedface ({enc} updates)", "fedface", {**plan.params.get("fedface", {}), "update_encoding": enc},
                      plan.seeds[:1]) for enc in plan.encodings]
    if plan.attackers:
        share = f"{plan.attackers:.0%} attackers x{plan.attack_scale:g}"
        unbounded = {**plan.params.get("fedface", {}), "robust": {"norm_bound": "off", "sample_cap": "off"}}
        runs += [BenchRun(f"fedface ({share}, bounded)", "fedface", plan.params.get("fedface", {}), plan.seeds[:1],
                          attackers=plan.attackers),
                 BenchRun(f"fedface ({share}, unbounded)", "fedface", unbounded, plan.seeds[:1],
                          attackers=plan.attackers)]
    runs += privacy_runs(plan)
    for run in runs:
        name, method, params, seeds = run.name, run.method, run.params, run.seeds
        evals, walls, bytes_up = [], [], []
        closing: list[tuple[dict[str, Any], float, float]] = []
        for seed in seeds:
            def on_round(r: RoundRecord, name: str = name, seed: int = seed) -> None:
                acc = f", acc {r.eval['accuracy']:.4f}" if r.eval else ""
                log(f"{name} seed {seed} round {r.round}: {r.submitted} updates, "
                    f"W cos {r.server_metrics.get('w_mean_offdiag_cos', float('nan')):.3f}{acc} ({r.seconds:.0f} s)")

            slug = re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-")
            sim = run_simulation(SimulationConfig(
                model=model, data_root=data, work_dir=work_dir / f"{slug}-seed{seed}", algorithm=method,
                devices=plan.devices, per_round=plan.per_round, rounds=plan.rounds, concurrency=plan.concurrency,
                local_epochs=plan.local_epochs, batch_size=plan.batch_size, learning_rate=plan.lr,
                params=params, eval_every=plan.eval_every, seed=seed, attackers=run.attackers,
                min_devices=run.min_devices,
                attack_scale=plan.attack_scale), evaluator,
                on_round=on_round)
            history = sim["history"]
            evals.append(history[-1]["eval"])
            walls.append(sim["wall_s"])
            bytes_up.append(float(np.mean([r["bytes_up_per_device"] for r in history])))
            # Every round's collapse monitor; accuracy where the round was evaluated.
            curves.setdefault(name, {})[f"seed{seed}"] = [
                {"round": 0, "accuracy": pre_eval["accuracy"]},
                *({"round": r["round"], "w_mean_offdiag_cos": r["server_metrics"].get("w_mean_offdiag_cos"),
                   "mean_loss_after": r["mean_loss_after"],
                   **({"accuracy": r["eval"]["accuracy"]} if r["eval"] else {})} for r in history),
            ]
            if method in plan.closing_lda and name == method:
                closing.append(statistics_round(Path(sim["final_model"]), f"{method}+lda-seed{seed}", lda_params))
                log(f"{method}+lda seed {seed}: {_fmt(closing[-1][0])}")
            _keep_only_final_model(work_dir / f"{slug}-seed{seed}")
        rows.append(_row(name, evals, plan.rounds, float(np.mean(walls)), float(np.mean(bytes_up))))
        log(f"{name}: {_fmt(rows[-1])}")
        if closing:
            # Its wall time is the whole path to that model (training, then the closing round); its
            # upload is the closing round's.
            rows.append(_row(f"{method}+lda", [ev for ev, _, _ in closing], plan.rounds + 1,
                             float(np.mean([w + c for w, (_, c, _) in zip(walls, closing, strict=True)])),
                             float(np.mean([up for _, _, up in closing]))))
            log(f"{method}+lda: {_fmt(rows[-1])}")

    rows += central_rows
    return {
        "plan": {k: (str(v) if isinstance(v, Path) else v) for k, v in plan.__dict__.items() if k != "pretrain"},
        "pretrain": ({k: str(v) for k, v in plan.pretrain.__dict__.items()} if plan.pretrain
                     else {"start": str(model), "source": "face-api"}),
        "rows": rows, "curves": curves, **gaps_closed(rows),
        "wall_s": round(time.perf_counter() - started, 1), "finished_at": datetime.now(UTC).isoformat(),
        "machine": {**machine_info(), **float_kernels()},
    }


def _centralized_rows(plan: ExperimentPlan, data: Path, work_dir: Path, model: Path, evaluator: Evaluator,
                      log: Callable[[str], None]) -> list[dict[str, Any]]:
    """The upper bound: the same layers fine-tuned on the pooled client photos (and its discriminant)."""
    t0 = time.perf_counter()
    central = centralized_finetune(CentralizedConfig(pretrained=model, data_root=data,
                                                     out=work_dir / "centralized.safetensors",
                                                     epochs=plan.centralized_epochs, lr=plan.centralized_lr,
                                                     max_identities=plan.centralized_identities,
                                                     frozen=list(plan.params.get("fedface", {}).get("frozen", [])),
                                                     scale=plan.centralized_scale))
    central_row = _row("centralized", [evaluator(central, plan.rounds)], 0, time.perf_counter() - t0, None)
    log(f"centralized: {_fmt(central_row)}")
    central_rows = [central_row]
    if plan.centralized_lda:
        t0 = time.perf_counter()
        names = ([name for name, _ in read_clients(data / "protocol" / "clients.txt")][:plan.centralized_identities]
                 if plan.centralized_identities else None)
        central_lda = recentre(central, data, work_dir / "centralized-lda.safetensors", plan.lda_dims,
                               plan.lda_shrinkage, names, plan.lda_mirror)
        central_rows.append(_row("centralized+lda", [evaluator(central_lda, plan.rounds)], 0,
                                 time.perf_counter() - t0, None))
        log(f"centralized+lda: {_fmt(central_rows[-1])}")
    return central_rows


def privacy_runs(plan: ExperimentPlan) -> list[BenchRun]:
    """fedface-private with secure aggregation beside the plain round that computes the same mean (the
    same fixed clip and sample cap, so that the two rows differ only by the protocol's fixed point), and
    with DP at each of the plan's epsilons: central, and distributed (device noise under secure aggregation)."""
    base = plan.params.get("fedface-private", {})
    runs: list[BenchRun] = []
    if plan.secagg:
        cap = plan.secagg_max_weight
        runs.append(BenchRun(f"fedface-private (clip {plan.secagg_clip:g}, cap {cap})", "fedface-private",
                             {**base, "robust": {"norm_bound": plan.secagg_clip, "sample_cap": cap}}, plan.seeds[:1]))
        runs.append(BenchRun("fedface-private (secure aggregation)", "fedface-private",
                             {**base, "secagg": {"clip_norm": plan.secagg_clip, "max_weight": cap}}, plan.seeds[:1]))
    modes = [("central", eps) for eps in plan.dp_epsilons]
    modes += [("distributed", eps) for eps in plan.distributed_dp_epsilons]
    for mode, eps in modes:
        z = noise_for_epsilon(plan.devices, plan.per_round, plan.rounds, eps, plan.dp_delta)
        # Rounded up: a slightly larger z keeps the run within its epsilon.
        dp = {"mode": mode, "noise_multiplier": math.ceil(z * 1e4) / 1e4, "clip": plan.dp_clip, "delta": plan.dp_delta}
        if mode == "central":
            runs.append(BenchRun(f"fedface-private (DP, epsilon {eps:g})", "fedface-private", {**base, "dp": dp},
                                 plan.seeds[:1]))
            continue
        # Each device adds its share of the noise for the fewest survivors the round unmasks (min_devices here):
        # with every device surviving the model carries sqrt(per_round / min_devices) times the accounted noise.
        quorum = math.ceil(plan.per_round * (1 - plan.distributed_dropout))
        runs.append(BenchRun(f"fedface-private (distributed DP, epsilon {eps:g})", "fedface-private",
                             {**base, "dp": dp, "secagg": {"clip_norm": plan.dp_clip,
                                                           "dropout": plan.distributed_dropout}},
                             plan.seeds[:1], min_devices=quorum))
    return runs


def _keep_only_final_model(sim_dir: Path) -> None:
    """A simulation's coordinator keeps every update it received (22 MB each from dlib's network, 22 GB
    for 10 rounds of 100): once its rows are measured, only its final model is worth keeping."""
    for entry in sim_dir.iterdir():
        if entry.name == "final.safetensors":
            continue
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def gaps_closed(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Each method's share of the pretrained-to-centralized gap in TAR@FAR=1e-3 (None when there
    is no gap), and each discriminant row's share of the gap to centralized+lda, the upper bound
    given the same transform."""
    by = {r["method"]: r for r in rows}
    start = by["pretrained"]["tar@far=0.001"]

    def closed_by(method: str, bound: str) -> float | None:
        if bound not in by:
            return None
        gap = by[bound]["tar@far=0.001"] - start
        return (by[method]["tar@far=0.001"] - start) / gap if gap > 0 else None

    methods = [m for m in by if m not in ("pretrained", "centralized", "centralized+lda")]
    return {
        **{f"{m}_gap_closed_tar@far=0.001": closed_by(m, "centralized") for m in methods},
        **{f"{m}_gap_to_centralized+lda_closed_tar@far=0.001": closed_by(m, "centralized+lda")
           for m in methods if m == "lda" or m.endswith("+lda")},
    }


def _statistics_round(plan: ExperimentPlan, model: Path, data: Path, work_dir: Path, params: dict[str, Any],
                      evaluator: Evaluator) -> tuple[dict[str, Any], float, float]:
    """MODEL after one round of every device with `embedding_stats` or `embedding_lda_dims` and
    no training: the embedding re-centred on the devices' faces (device_agent/embedding_stats.py),
    or their discriminant folded in. Deterministic, so one run. (eval, wall seconds, upload bytes)"""
    sim = run_simulation(SimulationConfig(
        model=model, data_root=data, work_dir=work_dir, algorithm="fedface", devices=plan.devices,
        rounds=0, enrollment_round=True, concurrency=plan.concurrency, batch_size=plan.batch_size,
        params=params), evaluator)
    (record,) = sim["history"]
    return record["eval"], float(sim["wall_s"]), float(record["bytes_up_per_device"])


def _fmt(m: dict[str, Any]) -> str:
    return ", ".join(f"{k} {m[k]:.4f}" for k in HEADLINE if k in m)


def with_overrides(plan: ExperimentPlan, **overrides: Any) -> ExperimentPlan:
    return replace(plan, **{k: v for k, v in overrides.items() if v is not None})
