"""The simulation path on a small slice: a tiny pretrained model, a handful of
virtual devices running the agent's code over real HTTP, two rounds each of
FedFace and fedface-private, evaluated on a slice of the development folds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedface_lab.dev_eval import identity_mean_cosine
from fedface_lab.pretrain import pretrain
from fedface_lab.simulate import SimulationConfig, choose_clients, run_simulation
from tests.lab.slices import slice_evaluator, tiny_pretrain_config


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import os

    root = Path(os.environ.get("FEDFACE_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data"))
    if not (root / "cfp").is_dir():
        pytest.skip(f"face data not found at {root} (set FEDFACE_DATA)")
    out = tmp_path_factory.mktemp("pretrained") / "tiny.safetensors"
    pretrain(tiny_pretrain_config(root, out))
    return out


@pytest.mark.parametrize("algorithm", ["fedface", "fedface-private"])
def test_simulation_runs_rounds_through_the_real_coordinator(algorithm: str, tiny_model: Path, data_root: Path,
                                                            tmp_path: Path) -> None:
    cfg = SimulationConfig(model=tiny_model, data_root=data_root, work_dir=tmp_path / "sim", algorithm=algorithm,
                           devices=3, per_round=2, rounds=2, concurrency=1, batch_size=8, eval_every=1, seed=3)
    seen: list[object] = []
    result = run_simulation(cfg, slice_evaluator(data_root, tmp_path, 2),
                            on_round=seen.append)
    history = result["history"]
    assert [r["round"] for r in history] == [1, 2] and len(seen) == 2
    assert all(r["submitted"] == 2 and r["participants"] == 2 for r in history)
    assert history[1]["version"] > history[0]["version"] > 1  # lineage: each round a new version
    assert all(r["bytes_up_per_device"] > 0 for r in history)
    assert 0.0 <= history[0]["eval"]["accuracy"] <= 1.0 and "auc" in history[1]["eval"]
    assert Path(result["final_model"]).is_file()
    metrics = history[1]["server_metrics"]
    if algorithm == "fedface":
        assert metrics["spreadout_after"] <= metrics["spreadout_before"] and metrics["w_rows"] >= 2
    else:
        assert "w_rows" not in metrics  # W never reaches the server
        # Each device kept its w_c on disk instead.
        assert list((tmp_path / "sim" / "devices").glob("*/private_wc.safetensors"))


def test_enrollment_round_sends_every_identity_before_any_training(tiny_model: Path, data_root: Path,
                                                                   tmp_path: Path) -> None:
    """Round 0 has every device send its class embedding and no backbone change:
    the served weights stay the same and W holds a row for every device."""
    from fedface_common.tensors import load_file

    cfg = SimulationConfig(model=tiny_model, data_root=data_root, work_dir=tmp_path / "sim", algorithm="fedface",
                           devices=3, per_round=2, rounds=0, concurrency=1, batch_size=8, seed=3,
                           enrollment_round=True)
    result = run_simulation(cfg)
    (enrollment,) = result["history"]
    assert (enrollment["round"], enrollment["participants"], enrollment["submitted"]) == (0, 3, 3)
    assert enrollment["mean_loss_before"] == enrollment["mean_loss_after"]  # no step was taken
    assert enrollment["server_metrics"]["w_rows"] == 3
    assert enrollment["server_metrics"]["spreadout_after"] <= enrollment["server_metrics"]["spreadout_before"]
    (published,) = (tmp_path / "sim" / "published").glob("*.weights.safetensors")
    before, after = load_file(published), load_file(Path(result["final_model"]))
    assert enrollment["version"] > 1 and set(before) == set(after)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_enrollment_round_with_embedding_stats_recentres_only_the_embedding(tiny_model: Path, data_root: Path,
                                                                           tmp_path: Path) -> None:
    """With embedding_stats, round 0 sets the embedding BN's running statistics to the devices'
    pooled moments (and changes nothing else); as the only round, it is the one evaluated."""
    from fedface_common.tensors import load_file

    cfg = SimulationConfig(model=tiny_model, data_root=data_root, work_dir=tmp_path / "sim", algorithm="fedface",
                           devices=3, per_round=2, rounds=0, concurrency=1, batch_size=8, seed=3,
                           enrollment_round=True, params={"embedding_stats": True})
    result = run_simulation(cfg, slice_evaluator(data_root, tmp_path, 0))
    (enrollment,) = result["history"]
    assert "auc" in enrollment["eval"]
    (published,) = (tmp_path / "sim" / "published").glob("*.weights.safetensors")
    before, after = load_file(published), load_file(Path(result["final_model"]))
    stats = {"bn_embedding.running_mean", "bn_embedding.running_var"}
    assert all(not np.array_equal(before[k], after[k]) for k in stats)
    assert all(np.array_equal(before[k], after[k]) for k in before if k not in stats)
    assert (after["bn_embedding.running_var"] >= 0).all()


@pytest.mark.parametrize("mirror", [False, True])
def test_enrollment_round_with_embedding_lda_folds_the_discriminant_into_the_embedding(
        tiny_model: Path, data_root: Path, tmp_path: Path, mirror: bool) -> None:
    """With embedding_lda_dims, round 0 carries each device's scatter over real HTTP and the server
    folds the discriminant into the projection and the embedding BN (and changes nothing else); the
    result equals the pooled computation of fedface_lab.recentre, one identity at a time (with mirror
    images too when the round asks for them)."""
    from fedface_common.tensors import load_file
    from fedface_lab.recentre import recentre

    params = {"embedding_stats": True, "embedding_lda_dims": 8, "embedding_lda_shrinkage": 0.5,
              "embedding_lda_mirror": mirror}
    cfg = SimulationConfig(model=tiny_model, data_root=data_root, work_dir=tmp_path / "sim", algorithm="fedface",
                           devices=3, per_round=2, rounds=0, concurrency=1, batch_size=8, seed=3,
                           enrollment_round=True, params=params)
    result = run_simulation(cfg)
    (enrollment,) = result["history"]
    assert enrollment["submitted"] == 3
    (published,) = (tmp_path / "sim" / "published").glob("*.weights.safetensors")
    before, after = load_file(published), load_file(Path(result["final_model"]))
    folded = {"project.weight", "bn_embedding.running_mean", "bn_embedding.running_var", "bn_embedding.weight",
              "bn_embedding.bias"}
    assert all(not np.array_equal(before[k], after[k]) for k in folded)
    assert all(np.array_equal(before[k], after[k]) for k in before if k not in folded)
    # 8 of 32 dimensions kept: the other rows of the projection are zero.
    rows = np.abs(after["project.weight"].reshape(32, -1)).sum(axis=1)
    assert (rows[:8] > 0).all() and (rows[8:] == 0).all()
    names = [name for name, _ in choose_clients(data_root, 3, 3)]
    pooled = load_file(recentre(tiny_model, data_root, tmp_path / "pooled.safetensors", 8, 0.5, names, mirror))
    for k in folded:
        np.testing.assert_allclose(after[k], pooled[k], rtol=1e-3, atol=1e-5)


def test_identity_mean_cosine_by_hand() -> None:
    emb = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert identity_mean_cosine(emb, ["a", "a", "b", "b"]) == pytest.approx(0.0)
    assert identity_mean_cosine(np.array([[1.0, 0.0], [2.0, 0.0]]), ["a", "b"]) == pytest.approx(1.0)


def test_centralized_finetune_on_a_slice(tiny_model: Path, data_root: Path, tmp_path: Path) -> None:
    from fedface_common.face.checkpoint import load_class_centres, load_manifest
    from fedface_lab.centralized import CentralizedConfig, centralized_finetune

    out = centralized_finetune(CentralizedConfig(pretrained=tiny_model, data_root=data_root,
                                                 out=tmp_path / "central.safetensors", epochs=1, batch_size=16,
                                                 max_identities=8, progress=False))
    assert load_manifest(out).notes["finetuned"].startswith("centralized")
    assert load_class_centres(out).shape == (8, 32)
    # BatchNorm statistics stay the pretrained model's (as in the federated methods); weights move.
    from fedface_common.tensors import load_file

    before, after = load_file(tiny_model), load_file(out)
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert stats and all(np.array_equal(before[k], after[k]) for k in stats)
    assert not all(np.array_equal(before[k], after[k]) for k in before if k.endswith("conv.weight"))


def test_a_simulation_starts_fresh_in_the_work_dir_of_an_interrupted_one(tiny_model: Path, data_root: Path,
                                                                        tmp_path: Path) -> None:
    """An earlier run that left a round open (killed mid-round) must not block or leak into the next one."""
    from fedface_common.admin_client import AdminClient
    from fedface_lab.simulate import coordinator

    cfg = SimulationConfig(model=tiny_model, data_root=data_root, work_dir=tmp_path / "sim", algorithm="fedface",
                           devices=2, per_round=2, rounds=0, concurrency=1, batch_size=8, seed=3,
                           enrollment_round=True)
    run_simulation(cfg)
    with coordinator(cfg.work_dir) as (url, token, _), AdminClient(url, token) as admin:
        # The state is fresh for each coordinator: register a model and leave a round open.
        (weights,) = (tmp_path / "sim" / "published").glob("*.weights.safetensors")
        version = admin.register_model(weights, serve=True)
        admin.start_round(cfg.round_config())
        assert version["id"] == 1
    (again,) = run_simulation(cfg)["history"]
    assert (again["round"], again["participants"], again["submitted"]) == (0, 2, 2)


def test_recentre_refuses_an_unknown_fifth_argument(tiny_model: Path) -> None:
    from fedface_lab.recentre import main

    with pytest.raises(SystemExit, match="only be 'mirror'"):
        main(["name", str(tiny_model), "8", "0.1", "flip"])
