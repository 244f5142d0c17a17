"""`fedface bench fedface`'s orchestration on a small slice: every row the plan asks for, each
closing discriminant round started from its own seed's trained model, the rows' means over
seeds, the gap shares and the report, with a tiny model and three devices over real HTTP."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedface_common.tensors import load_file
from fedface_lab.bench_fedface import ExperimentPlan, gaps_closed, privacy_runs, run_experiment
from fedface_lab.bench_report import markdown_table, write_report
from fedface_lab.recentre import recentre
from fedface_lab.simulate import choose_clients
from tests.lab.slices import slice_evaluator, tiny_pretrain_config

Experiment = tuple[dict[str, Any], Path, Path]  # the result, the work folder, the data root
FOLDED = ("project.weight", "bn_embedding.running_mean", "bn_embedding.running_var", "bn_embedding.weight",
          "bn_embedding.bias")


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Experiment:
    root = Path(os.environ.get("FEDFACE_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data"))
    if not (root / "protocol" / "clients.txt").is_file():
        pytest.skip(f"face data not found at {root} (set FEDFACE_DATA)")
    work = tmp_path_factory.mktemp("bench")
    plan = ExperimentPlan(name="tiny", pretrain=tiny_pretrain_config(root, Path("unused")), devices=3, per_round=2,
                          rounds=1, seeds=(0, 1), eval_every=1, batch_size=8, concurrency=1, centralized_epochs=1,
                          centralized_identities=3, lda_dims=8, statistics_rows=("lda",), closing_lda=("fedface",))
    logged: list[str] = []
    result = run_experiment(plan, root, work / "run", log=logged.append,
                            evaluator_for=lambda final: slice_evaluator(root, work / "eval", final),
                            models_dir=work / "models")
    assert any("made in" in line for line in logged)  # the cache was empty: it pretrained
    return result, work, root


def test_the_plan_gives_every_row_in_order_with_one_closing_row(experiment: Experiment) -> None:
    result, _, _ = experiment
    assert [r["method"] for r in result["rows"]] == [
        "pretrained", "lda", "fedface", "fedface+lda", "fedavg", "fedface-private", "centralized", "centralized+lda"]
    by = {r["method"]: r for r in result["rows"]}
    assert by["fedface"]["rounds"] == 1 and by["fedface+lda"]["rounds"] == 2
    assert by["fedface+lda"]["seeds"] == 2 and by["lda"]["seeds"] == 1
    # The closing round uploads what the discriminant round from the pretrained model uploads.
    assert by["fedface+lda"]["bytes_up_per_device_per_round"] == by["lda"]["bytes_up_per_device_per_round"]
    assert by["fedface+lda"]["wall_s"] > by["fedface"]["wall_s"]  # training, then the closing round
    assert set(result["curves"]) == {"fedface", "fedavg", "fedface-private"}


def test_each_closing_round_folds_the_discriminant_of_its_own_seeds_trained_model(
        experiment: Experiment) -> None:
    result, work, root = experiment
    names = [name for name, _ in choose_clients(root, 3, 0)]  # the closing round's devices
    evaluator = slice_evaluator(root, work / "eval-check", 0)
    accuracies = []
    for seed in (0, 1):
        trained = work / "run" / f"fedface-seed{seed}" / "final.safetensors"
        closed = work / "run" / f"fedface+lda-seed{seed}" / "final.safetensors"
        pooled = load_file(recentre(trained, root, work / f"pooled-{seed}.safetensors", 8, 0.1, names, True))
        after = load_file(closed)
        for key in FOLDED:
            np.testing.assert_allclose(after[key], pooled[key], rtol=1e-3, atol=1e-5)
        # Everything else is the trained model's, not the pretrained one's.
        before = load_file(trained)
        assert all(np.array_equal(before[k], after[k]) for k in before if k not in FOLDED)
        accuracies.append(evaluator(closed, 0)["accuracy"])
    row = next(r for r in result["rows"] if r["method"] == "fedface+lda")
    assert row["accuracy"] == pytest.approx(float(np.mean(accuracies)), abs=1e-12)
    assert row["accuracy_std"] == pytest.approx(float(np.std(accuracies, ddof=1)), abs=1e-12)


def test_gap_shares_and_the_report(experiment: Experiment, tmp_path: Path) -> None:
    result, _, _ = experiment
    # Each row's share of the gap, from the TARs the rows report: against centralized for every
    # trained or transformed row, and against centralized+lda for the discriminant rows too.
    tar = {r["method"]: r["tar@far=0.001"] for r in result["rows"]}

    def share(method: str, bound: str) -> float | None:
        gap = tar[bound] - tar["pretrained"]
        return (tar[method] - tar["pretrained"]) / gap if gap > 0 else None

    expected = {f"{m}_gap_closed_tar@far=0.001": share(m, "centralized")
                for m in ("lda", "fedface", "fedface+lda", "fedavg", "fedface-private")}
    expected |= {f"{m}_gap_to_centralized+lda_closed_tar@far=0.001": share(m, "centralized+lda")
                 for m in ("lda", "fedface+lda")}
    assert {k: v for k, v in result.items() if "_gap_" in k} == pytest.approx(expected, abs=1e-12)
    md = write_report(result, tmp_path / "t.md", tmp_path / "t.png")
    assert "| fedface+lda |" in md and (tmp_path / "t.png").stat().st_size > 0
    assert "fedface+lda_gap_to_centralized+lda_closed_tar@far=0.001" in result


def test_gap_shares_by_hand() -> None:
    def row(method: str, tar: float) -> dict[str, Any]:
        return {"method": method, "tar@far=0.001": tar}

    rows = [row("pretrained", 0.04), row("lda", 0.08), row("fedface", 0.03), row("fedface+lda", 0.09),
            row("centralized", 0.10), row("centralized+lda", 0.12)]
    got = gaps_closed(rows)
    assert got["lda_gap_closed_tar@far=0.001"] == pytest.approx(4 / 6)
    assert got["fedface_gap_closed_tar@far=0.001"] == pytest.approx(-1 / 6)
    assert got["fedface+lda_gap_to_centralized+lda_closed_tar@far=0.001"] == pytest.approx(5 / 8)
    assert "fedface_gap_to_centralized+lda_closed_tar@far=0.001" not in got
    no_gap = [row("pretrained", 0.1), row("fedface", 0.2), row("centralized", 0.1), row("centralized+lda", 0.05)]
    assert gaps_closed(no_gap) == {"fedface_gap_closed_tar@far=0.001": None}


def test_without_a_gap_the_report_gives_each_rows_change_against_the_pretrained_network() -> None:
    def row(method: str, acc: float, tar3: float) -> dict[str, Any]:
        return {"method": method, "accuracy": acc, "tar@far=0.001": tar3, "tar@far=0.0001": 0.5, "auc": 0.9,
                "rounds": 1, "wall_s": 1.0, "bytes_up_per_device_per_round": None, "feature_mean_offdiag_cos": 0.5}

    rows = [row("pretrained", 0.99, 0.90), row("fedface", 0.995, 0.92), row("centralized", 0.98, 0.85)]
    result = {"rows": rows, "plan": {"seeds": [0]}, "wall_s": 61.0, **gaps_closed(rows)}
    text = markdown_table(result)
    assert "does not beat the pretrained network" in text
    assert "fedface A +0.50, TAR@1e-3 +2.00, TAR@1e-4 +0.00, AUC +0.00" in text
    assert "centralized A -1.00, TAR@1e-3 -5.00" in text


def test_the_privacy_plan_pairs_secure_aggregation_with_the_plain_round_of_the_same_mean() -> None:
    plan = ExperimentPlan.privacy(Path("unused"))
    runs = {r.name: r for r in privacy_runs(plan)}
    plain = runs[f"fedface-private (clip {plan.secagg_clip:g}, cap {plan.secagg_max_weight})"].params
    secure = runs["fedface-private (secure aggregation)"].params
    # The same clip and sample cap, so that only the protocol differs between the two rows.
    assert plain["robust"] == {"norm_bound": plan.secagg_clip, "sample_cap": plan.secagg_max_weight}
    assert secure["secagg"] == {"clip_norm": plan.secagg_clip, "max_weight": plan.secagg_max_weight}
    assert "secagg" not in plain and "robust" not in secure
    central = [r for r in runs.values() if "dp" in r.params and r.params["dp"]["mode"] == "central"]
    assert len({r.params["dp"]["noise_multiplier"] for r in central}) == len(plan.dp_epsilons)
    (distributed,) = [r for r in runs.values() if "dp" in r.params and r.params["dp"]["mode"] == "distributed"]
    # Distributed noise needs secure aggregation at the DP clip and a quorum the device shares are sized for.
    assert distributed.params["secagg"]["clip_norm"] == plan.dp_clip == distributed.params["dp"]["clip"]
    assert distributed.min_devices == 45 and all(r.min_devices == 1 for r in central)
    # The same epsilon gives the same noise multiplier in both modes: only who adds the noise differs.
    eps8 = next(r for r in central if r.name.endswith("epsilon 8)"))
    assert distributed.params["dp"]["noise_multiplier"] == eps8.params["dp"]["noise_multiplier"]
