"""Changing the served model keeps W consistent with it, over real HTTP: a rollback, promotion or
new registration drops the W rows written outside the served version's lineage, and is refused while
a round runs (that round would commit a child of its own base and serve it over the operator's choice)."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support.fleet import (
    ADMIN,
    Device,
    delta_bytes,
    enroll,
    get_round,
    model_bytes,
    register_model,
    start_round,
    tiny_model,
)
from tests.support.live import wait_until


def _one_device_round(api: httpx.Client, device: Device, base_version: int, seed: int) -> int:
    """A committed round in which only DEVICE takes part; returns the new version's id."""
    rnd = start_round(api, target_devices=1, min_devices=1, over_selection=1.0)
    assert device.check_in()["status"] == "task"
    assert device.submit(rnd["id"], delta_bytes(seed), base_version=base_version).status_code == 200
    wait_until(lambda: get_round(api, rnd["id"])["state"] == "committed", what="round commit")
    return int(get_round(api, rnd["id"])["result_version_id"])


def _rows_held(api: httpx.Client, devices: list[Device]) -> list[bool]:
    """Whether each device has a W row, as a new round's check-in tells it; the round is cancelled."""
    rnd = start_round(api, target_devices=len(devices), min_devices=1)
    held = [d.check_in()["task"]["has_class_embedding"] for d in devices]
    assert api.post(f"/v1/admin/rounds/{rnd['id']}/cancel", headers=ADMIN).status_code == 200
    return held


def _served(api: httpx.Client) -> list[int]:
    return [v["id"] for v in api.get("/v1/admin/models", headers=ADMIN).json() if v["served"]]


def _last_audit(api: httpx.Client, action: str) -> dict[str, Any]:
    entries = [e for e in api.get("/v1/admin/audit", headers=ADMIN).json() if e["action"] == action]
    return dict(max(entries, key=lambda e: e["id"])["details"])


def test_changing_the_served_model_drops_the_rows_outside_its_lineage(api: httpx.Client) -> None:
    v1 = register_model(api)["id"]
    a, b = enroll(api, 2)
    v2 = _one_device_round(api, a, v1, seed=1)  # a's row is written by v2
    v3 = _one_device_round(api, b, v2, seed=2)  # b's by v3
    assert _rows_held(api, [a, b]) == [True, True]

    # Rolling back to v2 abandons v3: b's row was measured in v3's space; a's (v2's) stays.
    rolled = api.post("/v1/admin/models/rollback", headers=ADMIN)
    assert rolled.status_code == 200 and rolled.json()["id"] == v2
    assert _last_audit(api, "model.rollback") == {"previous": v3, "class_embeddings_dropped": 1}
    assert _rows_held(api, [a, b]) == [True, False]

    # Promoting v3 again: its lineage holds v2, so a's row stays (b's is not brought back).
    assert api.post(f"/v1/admin/models/{v3}/promote", headers=ADMIN).status_code == 200
    assert _last_audit(api, "model.promote")["class_embeddings_dropped"] == 0
    assert _rows_held(api, [a, b]) == [True, False]

    # A newly registered model shares no lineage with any row.
    v4 = register_model(api, tiny_model(seed=3))["id"]
    assert _served(api) == [v4]
    assert _last_audit(api, "model.register")["class_embeddings_dropped"] == 1
    assert _rows_held(api, [a, b]) == [False, False]


def test_the_served_model_cannot_change_while_a_round_runs(api: httpx.Client) -> None:
    v1 = register_model(api)["id"]
    (a,) = enroll(api, 1)
    v2 = _one_device_round(api, a, v1, seed=1)
    rnd = start_round(api, target_devices=1, min_devices=1)
    models_before = api.get("/v1/admin/models", headers=ADMIN).json()

    attempts = [
        api.post("/v1/admin/models/rollback", headers=ADMIN),
        api.post(f"/v1/admin/models/{v1}/promote", headers=ADMIN),
        api.post("/v1/admin/models", content=model_bytes(tiny_model(seed=4)), headers=ADMIN,
                 params={"serve": True}),
    ]
    for r in attempts:
        assert r.status_code == 409, r.text
        assert r.json()["code"] == "round_active"
        assert f"round {rnd['id']} is collecting" in r.json()["detail"]
    # Nothing changed: the same versions (the refused registration stored none), v2 served, the row kept.
    assert api.get("/v1/admin/models", headers=ADMIN).json() == models_before
    assert _served(api) == [v2]
    assert a.check_in()["task"]["has_class_embedding"] is True

    # Registering without serving it is fine during a round.
    assert register_model(api, tiny_model(seed=5), serve=False)["served"] is False
    assert _served(api) == [v2]
