"""One hostile device in ten, over real HTTP on Postgres: it can neither stop training nor poison the model.

Each attack runs a round of ten devices (nine honest, one attacker), then the same round's honest updates
alone through the same bounds, and checks the committed model against the honest-only one: the attacker
moves the mean by at most its capped share of (norm bound + |honest mean|). Then the next round runs."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import create_engine, text

from coordinator.strategies import Accumulator, AggregationResult, Strategy, make_strategy
from coordinator.strategies.registry import STRATEGIES
from coordinator.strategies.robust import BoundedAggregation, RoundBounds
from fedface_common.tensors import decode, encode
from fedface_common.wire import CLASS_EMBEDDING_TENSOR
from tests.support.fleet import ADMIN, Device, delta, enroll, get_round, register_model, start_round, tiny_model
from tests.support.live import LiveServer, wait_until

HONEST_SAMPLES = [12, 15, 20, 18, 25, 16, 14, 22, 19]
NAMES = ("layer.weight", "layer.bias")


def _honest(i: int) -> dict[str, np.ndarray]:
    return delta(100 + i, scale=0.01)


def _scaled(factor: float) -> Callable[[], tuple[dict[str, np.ndarray], int]]:
    return lambda: ({**_honest(99), **{n: _honest(99)[n] * np.float32(factor) for n in NAMES}}, 20)


ATTACKS: dict[str, Callable[[], tuple[dict[str, np.ndarray], int]]] = {
    "scaled-x10": _scaled(10),
    "scaled-x1000": _scaled(1000),
    "filled-3e38": lambda: ({**_honest(99), **{n: np.full_like(_honest(99)[n], 3e38) for n in NAMES}}, 20),
    "sign-flipped-x100": _scaled(-100),
    "inflated-samples": lambda: (_honest(99), 100_000),
}


def _committed(api: httpx.Client, round_id: int) -> dict[str, Any]:
    wait_until(lambda: get_round(api, round_id)["state"] in ("committed", "failed"), what="round end")
    return get_round(api, round_id)


def _weights(api: httpx.Client, version_id: int) -> dict[str, np.ndarray]:
    r = api.get(f"/v1/admin/models/{version_id}/weights", headers=ADMIN)
    assert r.status_code == 200, r.text
    return decode(r.content)


def _round(api: httpx.Client, devices: list[Device], algorithm: str, updates: list[tuple[dict[str, np.ndarray], int]],
           params: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[httpx.Response]]:
    served = next(v for v in api.get("/v1/admin/models", headers=ADMIN).json() if v["served"])
    rnd = start_round(api, algorithm=algorithm, target_devices=len(updates), min_devices=len(updates) - 1,
                      deadline_s=60, params=params or {})
    for d in devices:
        assert d.check_in()["status"] == "task"
    responses = [d.submit(rnd["id"], encode(u), num_samples=n, base_version=served["id"])
                 for d, (u, n) in zip(devices, updates, strict=True)]
    if any(r.status_code != 200 for r in responses):
        assert api.post(f"/v1/admin/rounds/{rnd['id']}/stop", headers=ADMIN).status_code == 200
    return _committed(api, rnd["id"]), responses


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_one_attacker_in_ten_moves_the_model_at_most_its_bounded_share(api: httpx.Client, attack: str) -> None:
    base = tiny_model()
    register_model(api, base)
    devices = enroll(api, 10)
    honest = [(_honest(i), n) for i, n in enumerate(HONEST_SAMPLES)]
    done, responses = _round(api, devices, "fedavg", [*honest, ATTACKS[attack]()])
    assert [r.status_code for r in responses] == [200] * 10, [r.text for r in responses]
    assert done["state"] == "committed", done["failure_reason"]
    robust = done["metrics"]["robust"]
    bounds = RoundBounds(norm_bound=robust["norm_bound"], sample_cap=robust["sample_cap"])
    got = _weights(api, done["result_version_id"])

    strategy = make_strategy("fedavg")
    agg = BoundedAggregation(strategy, strategy.params.robust, bounds)
    acc = Accumulator()
    for u, n in honest:
        agg.fold(acc, uuid.uuid4(), u, n)
    honest_only = agg.finalize(base, acc, {}).weights
    attacker_weight = min(ATTACKS[attack]()[1], bounds.sample_cap or np.inf)
    share = attacker_weight / (attacker_weight + sum(HONEST_SAMPLES))
    honest_step = np.sqrt(sum(float(np.sum((honest_only[n] - base[n]).astype(np.float64) ** 2)) for n in NAMES))
    distance = np.sqrt(sum(float(np.sum((got[n] - honest_only[n]).astype(np.float64) ** 2)) for n in NAMES))
    assert np.isfinite(distance)
    assert distance <= share * (bounds.norm_bound + honest_step) * (1 + 1e-4), (distance, bounds, share)
    if attack != "inflated-samples":
        assert robust["clipped"] >= 1
    else:
        assert robust["capped"] == 1

    # The next round runs, from the model the attacked round committed.
    nxt, responses = _round(api, devices[:3], "fedavg", [(_honest(i), 10) for i in range(3)])
    assert nxt["state"] == "committed" and nxt["base_version_id"] == done["result_version_id"]


def test_without_the_bound_the_same_attacker_poisons_the_model(api: httpx.Client) -> None:
    """What the default prevents, shown once: with the bounds off, the filled update's weighted share (3e38 x
    20/201, about 3e37) is what the committed model holds, and the next round still runs."""
    register_model(api, tiny_model())
    devices = enroll(api, 10)
    updates = [*[(_honest(i), n) for i, n in enumerate(HONEST_SAMPLES)], ATTACKS["filled-3e38"]()]
    done, _ = _round(api, devices, "fedavg", updates, {"robust": {"norm_bound": "off", "sample_cap": "off"}})
    assert done["state"] == "committed", done["failure_reason"]
    assert max(float(np.abs(w).max()) for w in _weights(api, done["result_version_id"]).values()) > 1e37
    nxt, _ = _round(api, devices[:2], "fedavg", [(_honest(i), 10) for i in range(2)])
    assert nxt["state"] == "committed"


@pytest.mark.parametrize("row", [np.zeros(4), np.full(4, 1e-30), np.full(4, 1e-45)])
def test_a_degenerate_class_embedding_is_refused_and_changes_nothing(api: httpx.Client, database_url: str,
                                                                     row: np.ndarray) -> None:
    register_model(api, tiny_model())
    devices = enroll(api, 3)
    served = next(v for v in api.get("/v1/admin/models", headers=ADMIN).json() if v["served"])
    rnd = start_round(api, algorithm="fedface", target_devices=3, min_devices=2, deadline_s=60)
    for d in devices:
        d.check_in()
    bad = {**_honest(0), CLASS_EMBEDDING_TENSOR: row.astype(np.float32)}
    r = devices[0].submit(rnd["id"], encode(bad), num_samples=10, base_version=served["id"])
    assert r.status_code == 422 and r.json()["code"] == "degenerate_class_embedding", r.text
    engine = create_engine(database_url.replace("+asyncpg", "+psycopg"))
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT count(*) FROM updates WHERE round_id = :r"), {"r": rnd["id"]}).scalar()
    engine.dispose()
    assert stored == 0
    for i, d in enumerate(devices[1:], start=1):
        assert d.submit(rnd["id"], encode(_honest(i)), num_samples=10, base_version=served["id"]).status_code == 200
    assert api.post(f"/v1/admin/rounds/{rnd['id']}/stop", headers=ADMIN).status_code == 200
    done = _committed(api, rnd["id"])
    assert done["state"] == "committed", done["failure_reason"]


class _Exploding(Strategy):
    """A strategy whose server step fails or blocks, to show the round engine never hangs on one."""

    name = "test-exploding"
    gate: threading.Event | None = None

    def finalize(self, base: Mapping[str, np.ndarray], acc: Accumulator,
                 class_embeddings: Mapping[uuid.UUID, np.ndarray]) -> AggregationResult:
        if self.gate is not None:
            self.gate.wait(30)
        raise FloatingPointError("overflow in the server step")


@pytest.fixture
def exploding(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[_Exploding]]:
    monkeypatch.setitem(STRATEGIES, _Exploding.name, _Exploding)
    yield _Exploding
    _Exploding.gate = None


def _one_update_round(api: httpx.Client, algorithm: str) -> dict[str, Any]:
    register_model(api, tiny_model())
    (device,) = enroll(api, 1)
    served = next(v for v in api.get("/v1/admin/models", headers=ADMIN).json() if v["served"])
    rnd = start_round(api, algorithm=algorithm, target_devices=1, min_devices=1)
    device.check_in()
    r = device.submit(rnd["id"], encode(delta(0, embedding=False)), num_samples=5, base_version=served["id"])
    assert r.status_code == 200, r.text
    return rnd


def test_a_failing_server_step_fails_the_round_with_its_reason(api: httpx.Client, server: LiveServer,
                                                               exploding: type[_Exploding]) -> None:
    rnd = _one_update_round(api, exploding.name)
    done = _committed(api, rnd["id"])
    assert done["state"] == "failed" and "FloatingPointError" in done["failure_reason"]
    nxt = start_round(api, algorithm="fedavg", target_devices=1, min_devices=1)
    assert nxt["state"] == "collecting"


def test_the_operator_can_cancel_a_round_while_it_aggregates(api: httpx.Client, exploding: type[_Exploding]) -> None:
    exploding.gate = threading.Event()
    rnd = _one_update_round(api, exploding.name)
    wait_until(lambda: get_round(api, rnd["id"])["state"] == "aggregating", what="aggregation start")
    r = api.post(f"/v1/admin/rounds/{rnd['id']}/cancel", headers=ADMIN)
    assert r.status_code == 200 and r.json()["state"] == "cancelled", r.text
    exploding.gate.set()
    assert get_round(api, rnd["id"])["state"] == "cancelled"
    assert start_round(api, algorithm="fedavg", target_devices=1, min_devices=1)["state"] == "collecting"
