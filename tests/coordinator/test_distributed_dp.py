"""Distributed DP over the device API, on Postgres and Redis over real HTTP: each device noises its clipped
update with its share before masking it, the server adds nothing, the committed model carries noise of the
accounted size whoever drops out, and the round is in the ledger. Without secure aggregation the mode is
refused before anything is stored."""

from __future__ import annotations

import math
from typing import Any

import httpx
import numpy as np
import pytest

from coordinator.engine.folding import AggregationError
from coordinator.engine.secagg_sum import _check_mean_norm
from coordinator.privacy import accountant
from coordinator.privacy.accountant import DpRound
from fedface_common import dp_noise
from fedface_common.secagg import groups
from fedface_common.tensors import decode
from tests.support.fleet import ADMIN, enroll, get_round, register_model, start_round
from tests.support.secure import SecureDevice, run_secure_round, secure_params

N, Z, CLIP, DELTA = 5, 1.0, 1.0, 1e-5
SHAPE = (100, 200)  # 20,000 coordinates: the noise's sample std is known to within 0.5% (one sd)
DISTRIBUTED = {"mode": "distributed", "noise_multiplier": Z, "clip": CLIP, "delta": DELTA}


def _updates(rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    """Norms 0.3 and 3: the second kind is clipped to 1 on the device, before its noise."""
    out = []
    for i in range(N):
        raw = rng.standard_normal(SHAPE)
        out.append({"w": (raw * ((0.3 if i % 2 else 3.0) / np.linalg.norm(raw))).astype(np.float32)})
    return out


def _clipped(update: dict[str, np.ndarray]) -> np.ndarray:
    w = update["w"].astype(np.float64)
    return w * min(1.0, CLIP / float(np.linalg.norm(w)))


def test_distributed_dp_without_secure_aggregation_is_refused_and_nothing_is_stored(api: httpx.Client) -> None:
    register_model(api, {"w": np.zeros(SHAPE, np.float32)}, embedding_dim=None)
    before = (api.get("/v1/admin/rounds", headers=ADMIN).json(), api.get("/v1/admin/privacy", headers=ADMIN).json())
    for params in ({"dp": DISTRIBUTED}, {"dp": DISTRIBUTED, "secagg": {"enabled": False}}):
        r = api.post("/v1/admin/rounds", headers=ADMIN, json={
            "algorithm": "fedavg-plain", "target_devices": N, "min_devices": 3, "params": params})
        assert r.status_code == 422 and r.json()["code"] == "invalid_config", r.text
        assert "distributed" in r.json()["detail"] and "secagg" in r.json()["detail"]
    assert (api.get("/v1/admin/rounds", headers=ADMIN).json(),
            api.get("/v1/admin/privacy", headers=ADMIN).json()) == before


@pytest.mark.parametrize("silent_at", [None, "masked_input", "unmask"])
def test_a_distributed_dp_round_commits_the_mean_plus_the_devices_noise(api: httpx.Client,
                                                                        silent_at: str | None) -> None:
    """A device that drops before its masked input leaves out its update and its noise; one that drops at
    unmasking leaves both in the sum. Either way the sum's noise is sigma_dev sqrt(s) >= z C."""
    rng = np.random.default_rng(17)
    base = {"w": rng.standard_normal(SHAPE).astype(np.float32)}
    register_model(api, base, embedding_dim=None)
    updates = _updates(rng)
    devices = [SecureDevice(d, u) for d, u in zip(enroll(api, N), updates, strict=True)]
    rnd = start_round(api, algorithm="fedavg-plain", target_devices=N, min_devices=3, over_selection=1.0,
                      deadline_s=30, params={**secure_params(clip_norm=CLIP), "dp": DISTRIBUTED})
    assert rnd["privacy"]["mode"] == "distributed"
    silent = {silent_at: {1}} if silent_at else None
    done = run_secure_round(api, int(rnd["id"]), devices, silent=silent)
    assert done["state"] == "committed", done["failure_reason"]

    secure, dp = done["metrics"]["secagg"], done["metrics"]["dp"]
    counted = [i for i in range(N) if silent_at != "masked_input" or i != 1]
    s = len(counted)
    m = min(N, max(secure["threshold"], 3))  # the fewest inputs the server unmasks
    sigma_dev = Z * CLIP / math.sqrt(m)
    assert secure["survivors"] == s and "mean_norm" not in secure
    assert dp["mode"] == "distributed" and dp["server_noise_stddev"] == 0
    assert dp["min_survivors"] == m and dp["survivors"] == s
    assert dp["device_noise_stddev"] == pytest.approx(sigma_dev)
    assert dp["noise_stddev"] == pytest.approx(sigma_dev * math.sqrt(s)) and dp["noise_stddev"] >= Z * CLIP

    got = decode(api.get(f"/v1/admin/models/{done['result_version_id']}/weights", headers=ADMIN).content)["w"]
    noise_on_mean = got.astype(np.float64) - base["w"] - np.sum([_clipped(updates[i]) for i in counted], axis=0) / N
    predicted = sigma_dev * math.sqrt(s) / N  # unit weights over the fixed denominator, target_devices
    assert abs(float(noise_on_mean.mean())) < 6 * predicted / math.sqrt(noise_on_mean.size)
    # The sample std of 20,000 normals is within 4% of sigma with overwhelming probability (sd 0.5%). No device
    # noise leaves only fixed-point rounding (std ~1e-7); central noise on top, or noise split over the
    # survivors instead of m, would be at least 26% more or 13% less.
    assert float(noise_on_mean.std()) == pytest.approx(predicted, rel=0.04)

    expected = accountant.epsilon([DpRound(1.0, Z)], DELTA)  # q = 5 of 5 enrolled: z composes as in central
    assert dp["epsilon"] == pytest.approx(expected) and done["privacy"]["epsilon"] == pytest.approx(expected)
    ledger = api.get("/v1/admin/privacy", headers=ADMIN).json()
    assert ledger["dp_rounds"] == 1 and ledger["epsilon"] == pytest.approx(expected)
    assert [r["round_id"] for r in ledger["rounds"]] == [rnd["id"]]
    assert get_round(api, int(rnd["id"]))["privacy"]["device_noise_stddev"] == pytest.approx(sigma_dev)


def test_the_noised_inputs_fit_the_fixed_point_range(api: httpx.Client) -> None:
    """The devices' params carry their noise, and the scale leaves room for the clamp at C + 10 sigma_dev: a
    larger noise gives a smaller scale (a larger rounding bound, still reported)."""
    register_model(api, {"w": np.zeros(SHAPE, np.float32)}, embedding_dim=None)
    rounds: list[dict[str, Any]] = []
    for z in (1.0, 50.0):
        devices = [SecureDevice(d, {"w": np.zeros(SHAPE, np.float32)}) for d in enroll(api, N)]
        rnd = start_round(api, algorithm="fedavg-plain", target_devices=N, min_devices=3, over_selection=1.0,
                          deadline_s=30, params={**secure_params(clip_norm=CLIP), "dp": {**DISTRIBUTED,
                                                                                         "noise_multiplier": z}})
        done = run_secure_round(api, int(rnd["id"]), devices)
        assert done["state"] == "committed", done["failure_reason"]
        rounds.append(done)
        params = devices[0].state.params  # type: ignore[union-attr]
        assert params.noise_stddev == pytest.approx(z * CLIP / math.sqrt(params.min_survivors))
        bound = CLIP + 10 * params.noise_stddev
        assert N * (bound * params.scale + 0.5) <= 2**31 - 1 < N * (bound * 2 * params.scale + 0.5)
        assert done["metrics"]["secagg"]["error_bound_sum"] == pytest.approx(N * 0.5 / params.scale)
    assert rounds[1]["metrics"]["secagg"]["scale"] < rounds[0]["metrics"]["secagg"]["scale"]


def test_the_mean_norm_check_allows_the_devices_noise_and_no_more() -> None:
    """n inputs of norm C in one direction, plus the devices' noise: the plain check would fail this honest
    sum; the widened one passes it, and still fails an unclipped input beyond the noise's allowance."""
    n, d, clip, sigma_dev, scale = 5, 20_000, 1.0, 0.6, 2.0**20
    rng = np.random.default_rng(8)
    direction = np.ones(d) / math.sqrt(d)
    noise = rng.normal(0.0, sigma_dev * math.sqrt(n), size=d)
    honest = n * clip * direction + noise
    slots = (groups.Slot("w", (d,), 0, d),)

    def check(total: np.ndarray, noise_stddev: float = 0.0) -> float:
        grouped = groups.GroupedSum({"w": total}, float(n), n, 0.0, groups.Groups(slots, (), None))
        return _check_mean_norm(grouped, slots, clip, scale, noise_stddev)

    with pytest.raises(AggregationError, match="above clip_norm"):
        check(honest)
    assert check(honest, sigma_dev) == pytest.approx(np.linalg.norm(honest) / n)
    # The honest sum sits well inside the allowance (its noise's norm is about sigma sqrt(n d), the bound adds
    # 10 sigma sqrt(n)); a sum 1% beyond n C plus the bound is refused.
    limit = n * clip + dp_noise.norm_bound(sigma_dev * math.sqrt(n), d)
    assert np.linalg.norm(honest) < limit - 5 * sigma_dev * math.sqrt(n)
    cheat = honest * (1.01 * limit / float(np.linalg.norm(honest)))
    with pytest.raises(AggregationError, match="above clip_norm"):
        check(cheat, sigma_dev)
