"""DP rounds over real HTTP on Postgres: the committed model is the clipped mean plus noise of the stated
scale, epsilon is stored with every round and version and grows, the budget refuses the next round (409,
nothing changed) and survives a restart, the adaptive clip carries over, and fedface refuses DP."""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from coordinator.privacy import accountant
from coordinator.privacy.accountant import DpRound
from coordinator.settings import Settings
from fedface_cli.main import app
from fedface_common.tensors import decode, encode
from tests.conftest import ADMIN_TOKEN
from tests.support.fleet import ADMIN, Device, enroll, get_round, register_model, start_round, tiny_model
from tests.support.live import LiveServer, serving, wait_until

DELTA = 1e-5


def _committed(api: httpx.Client, round_id: int) -> dict[str, Any]:
    wait_until(lambda: get_round(api, round_id)["state"] in ("committed", "failed"), what=f"round {round_id} end")
    done = get_round(api, round_id)
    assert done["state"] == "committed", done["failure_reason"]
    return done


def _serve(api: httpx.Client, devices: list[Device], rnd: dict[str, Any],
           updates: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """The devices take the round's task, submit, and the round commits."""
    for d in devices:
        assert d.check_in()["status"] == "task"
    for i, (d, u) in enumerate(zip(devices, updates, strict=True)):
        r = d.submit(rnd["id"], encode(u), num_samples=3 + 40 * i, base_version=rnd["base_version_id"])
        assert r.status_code == 200, r.text
    return _committed(api, rnd["id"])


def _latest_round(api: httpx.Client) -> dict[str, Any]:
    return dict(max(api.get("/v1/admin/rounds", headers=ADMIN).json(), key=lambda r: r["id"]))


def _weights(api: httpx.Client, version_id: int) -> dict[str, np.ndarray]:
    r = api.get(f"/v1/admin/models/{version_id}/weights", headers=ADMIN)
    assert r.status_code == 200, r.text
    return decode(r.content)


def _small(seed: int, scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"layer.weight": (rng.standard_normal((3, 5)) * scale).astype(np.float32),
            "layer.bias": (rng.standard_normal(3) * scale).astype(np.float32)}


def test_a_dp_round_commits_the_clipped_mean_plus_noise_of_the_stated_scale(api: httpx.Client) -> None:
    rng = np.random.default_rng(5)
    base = {"w": rng.standard_normal((100, 200)).astype(np.float32)}
    register_model(api, base, embedding_dim=None)
    devices = enroll(api, 6)
    z, clip, m = 1.0, 1.0, 6
    rnd = start_round(api, algorithm="fedavg-plain", target_devices=m, min_devices=m, over_selection=1.0,
                      params={"dp": {"noise_multiplier": z, "clip": clip, "delta": DELTA}})
    planned = rnd["privacy"]
    assert planned["population"] == 6 and planned["sampling_probability"] == 1.0 and planned["clip"] == clip
    # Norms from 0.14 to 14: the larger ones are clipped to C.
    updates = [{"w": (rng.standard_normal((100, 200)) * s).astype(np.float32)}
               for s in (0.001, 0.005, 0.01, 0.02, 0.05, 0.1)]
    done = _serve(api, devices, rnd, updates)

    got = _weights(api, done["result_version_id"])["w"].astype(np.float64)
    clipped = [u["w"].astype(np.float64) * min(1.0, clip / float(np.linalg.norm(u["w"]))) for u in updates]
    noise_on_mean = got - base["w"] - np.sum(clipped, axis=0) / m  # unit weights, the fixed denominator m
    assert abs(float(noise_on_mean.mean())) < 5 * z * clip / m / math.sqrt(noise_on_mean.size)
    # The std of 20,000 normals is within 3% of sigma far beyond any chance of a false alarm (sd 0.5%).
    assert float(noise_on_mean.std()) == pytest.approx(z * clip / m, rel=0.03)

    expected = accountant.epsilon([DpRound(1.0, z)], DELTA)
    version = api.get(f"/v1/admin/models/{done['result_version_id']}", headers=ADMIN).json()
    assert done["metrics"]["dp"]["epsilon"] == pytest.approx(expected)
    assert version["metrics"]["dp"]["epsilon"] == pytest.approx(expected)
    assert done["privacy"]["epsilon"] == pytest.approx(expected) and done["privacy"]["noise_stddev"] == z * clip
    assert "robust" not in done["metrics"] and "total_samples" not in done["metrics"]


def test_epsilon_grows_per_round_and_the_budget_refuses_the_next_round(api: httpx.Client, settings: Settings) -> None:
    register_model(api, tiny_model(), embedding_dim=None)
    devices = enroll(api, 4)
    dp = {"noise_multiplier": 1.0, "clip": 0.5, "delta": DELTA}
    q = 0.5  # 2 devices a round (over_selection 1) out of 4 enrolled
    spent = [accountant.epsilon([DpRound(q, 1.0)] * k, DELTA) for k in (1, 2, 3)]
    config: dict[str, Any] = {"algorithm": "fedavg-plain", "target_devices": 2, "min_devices": 2, "over_selection": 1.0,
              "deadline_s": 60}
    # Three continuous rounds asked for, a budget that fits two: the chain stops after the second.
    budget = (spent[1] + spent[2]) / 2
    first = start_round(api, **config, continuous_rounds=2, params={"dp": {**dp, "epsilon_budget": budget}})
    assert first["privacy"]["epsilon"] == pytest.approx(spent[0]) and first["privacy"]["epsilon_before"] == 0
    done = [_serve(api, devices[:2], first, [_small(1), _small(2)])]
    second = _latest_round(api)
    assert second["id"] == first["id"] + 1 and second["state"] == "collecting"
    done.append(_serve(api, devices[2:], second, [_small(3), _small(4)]))
    assert "privacy budget" in done[1]["metrics"]["continuous_stopped"]
    assert _latest_round(api)["id"] == second["id"]

    for k, rnd in enumerate(done):
        version = api.get(f"/v1/admin/models/{rnd['result_version_id']}", headers=ADMIN).json()
        assert rnd["metrics"]["dp"]["epsilon"] == pytest.approx(spent[k])
        assert version["metrics"]["dp"]["epsilon"] == pytest.approx(spent[k])
        assert rnd["privacy"]["sampling_probability"] == q and rnd["privacy"]["dp_round"] == k + 1
    ledger = api.get("/v1/admin/privacy", headers=ADMIN).json()
    assert ledger["epsilon"] == pytest.approx(spent[1]) and ledger["dp_rounds"] == 2

    def snapshot() -> tuple[Any, ...]:
        return (api.get("/v1/admin/rounds", headers=ADMIN).json(), api.get("/v1/admin/audit", headers=ADMIN).json(),
                api.get("/v1/admin/models", headers=ADMIN).json(), api.get("/v1/admin/privacy", headers=ADMIN).json())

    before = snapshot()
    r = api.post("/v1/admin/rounds", headers=ADMIN, json={**config, "params": {"dp": {**dp, "epsilon_budget": budget}}})
    assert r.status_code == 409, r.text
    problem = r.json()
    assert problem["code"] == "privacy_budget_exhausted"
    assert problem["epsilon_next"] == pytest.approx(spent[2]) and problem["epsilon_spent"] == pytest.approx(spent[1])
    assert snapshot() == before

    # After a restart the ledger is recomposed from the stored rounds, and the deployment's ceiling holds
    # even against a round that asks for a larger budget.
    api.close()
    ceiling = settings.model_copy(update={"dp_epsilon_budget": budget})
    with serving(ceiling) as again:
        assert again.get("/v1/admin/privacy", headers=ADMIN).json()["epsilon"] == pytest.approx(spent[1])
        r = again.post("/v1/admin/rounds", headers=ADMIN,
                       json={**config, "params": {"dp": {**dp, "epsilon_budget": 1000}}})
        assert r.status_code == 409 and r.json()["code"] == "privacy_budget_exhausted", r.text
        more_noise = {**dp, "noise_multiplier": 50.0}
        assert again.post("/v1/admin/rounds", headers=ADMIN,
                          json={**config, "params": {"dp": more_noise}}).status_code == 201


def test_the_adaptive_clip_carries_over_and_the_cli_shows_epsilon(api: httpx.Client, server: LiveServer) -> None:
    register_model(api, tiny_model(), embedding_dim=None)
    devices = enroll(api, 4)
    # Every update is far longer than the first clip, so the noised unclipped fraction is near 0 and the clip
    # grows; sigma_b 0.3 puts it beyond the target 0.5 only at 6.7 standard deviations.
    dp = {"noise_multiplier": 0.5, "clip": "adaptive", "initial_clip": 0.01, "clip_count_stddev": 0.3}
    first = start_round(api, algorithm="fedavg-plain", target_devices=4, min_devices=4, over_selection=1.0,
                        continuous_rounds=1, params={"dp": dp})
    assert first["privacy"]["clip"] == 0.01 and first["privacy"]["sum_noise_multiplier"] > 0.5
    done = _serve(api, devices, first, [_small(i, 0.5) for i in range(4)])
    next_clip = done["metrics"]["dp"]["next_clip"]
    assert next_clip > 0.01 and done["privacy"]["next_clip"] == next_clip
    second = _latest_round(api)
    assert second["privacy"]["clip"] == next_clip

    runner = CliRunner()
    base = ["admin", "--server", server.url, "--token", ADMIN_TOKEN]
    shown = runner.invoke(app, [*base, "rounds", "show", str(first["id"])], env={"COLUMNS": "200"})
    assert shown.exit_code == 0 and f"{first['privacy']['epsilon']:.3g} (δ=1e-05)" in shown.stdout, shown.output
    listed = runner.invoke(app, [*base, "models", "list"], env={"COLUMNS": "250"})
    assert listed.exit_code == 0 and f"{done['metrics']['dp']['epsilon']:.3g} (δ=1e-05)" in listed.stdout
    ledger = runner.invoke(app, [*base, "--json", "privacy"])
    assert ledger.exit_code == 0, ledger.output
    assert json.loads(ledger.stdout)["epsilon"] == pytest.approx(done["metrics"]["dp"]["epsilon"])


def test_fedface_with_dp_is_a_config_error(api: httpx.Client) -> None:
    register_model(api, tiny_model())
    r = api.post("/v1/admin/rounds", headers=ADMIN,
                 json={"algorithm": "fedface", "target_devices": 2, "params": {"dp": {"noise_multiplier": 1.0}}})
    assert r.status_code == 422 and r.json()["code"] == "invalid_config", r.text
    assert "class embedding" in r.json()["detail"]
    assert api.get("/v1/admin/rounds", headers=ADMIN).json() == []
