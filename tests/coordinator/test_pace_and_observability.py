"""Pace steering, rate limits, health, readiness, metrics and logs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import httpx

from tests.support.fleet import delta_bytes, enroll, get_round, register_model, start_round
from tests.support.live import wait_until
from tests.support.proc import CoordinatorProcess


def test_over_selection_caps_tasks_and_spreads_the_others(api: httpx.Client) -> None:
    register_model(api)
    devices = enroll(api, 12)
    start_round(api, target_devices=4, min_devices=1, over_selection=1.5, deadline_s=120)
    answers = [d.check_in() for d in devices]
    tasks = [a for a in answers if a["status"] == "task"]
    waits = [a["retry_after_s"] for a in answers if a["status"] == "wait"]
    assert len(tasks) == math.ceil(4 * 1.5)
    assert len(waits) == 6
    # Told to come back after the round's deadline, at different times.
    assert all(w >= 100 for w in waits) and len(set(waits)) > 1
    # A selected device asking again gets its task again, not a second slot.
    assert devices[0].check_in() == answers[0]


def test_idle_fleet_is_told_to_come_back_later(api: httpx.Client) -> None:
    (dev,) = enroll(api, 1)
    r = dev.check_in()
    assert r["status"] == "wait" and r["retry_after_s"] >= 1 and r["task"] is None


def test_health_readiness_metrics(api: httpx.Client) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz").json()
    assert ready["ready"] and set(ready["checks"]) == {"database", "redis", "blob_store"}
    v1 = register_model(api)
    (dev,) = enroll(api, 1)
    rnd = start_round(api, target_devices=2)
    dev.check_in()
    dev.submit(rnd["id"], b"junk", base_version=v1["id"])
    dev.submit(rnd["id"], delta_bytes(1), base_version=v1["id"])
    text = api.get("/metrics").text
    assert 'fedface_checkins_total{outcome="task"}' in text
    assert 'fedface_submissions_total{outcome="accepted"}' in text
    assert 'fedface_submissions_total{outcome="invalid_tensors"}' in text
    assert "fedface_aggregation_seconds_bucket" in text


def test_embedded_mode_runs_a_round_and_logs_json_with_ids(tmp_path: Path) -> None:
    """No database or Redis configured: SQLite, fakeredis and a local blob dir."""
    env = {"FEDFACE_DATA_DIR": str(tmp_path / "embedded"), "FEDFACE_TICK_INTERVAL_S": "0.05",
           "FEDFACE_DATABASE_URL": "", "FEDFACE_REDIS_URL": ""}
    proc = CoordinatorProcess(env, tmp_path / "embedded.log")
    proc.env.pop("FEDFACE_DATABASE_URL")
    proc.env.pop("FEDFACE_REDIS_URL")
    proc.env.pop("FEDFACE_ADMIN_TOKEN", None)
    proc.start()
    try:
        token = (tmp_path / "embedded" / "admin-token").read_text().strip()
        assert (tmp_path / "embedded" / "admin-token").stat().st_mode & 0o777 == 0o600
        admin = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=proc.url, timeout=30) as api:
            ready = api.get("/readyz").json()
            assert ready["ready"]
            v1 = register_model(api, admin=admin)
            (dev,) = enroll(api, 1, admin=admin)
            rnd = start_round(api, admin=admin, target_devices=1)
            dev.check_in()
            assert dev.submit(rnd["id"], b"junk", base_version=v1["id"]).status_code == 422
            assert dev.submit(rnd["id"], delta_bytes(3), base_version=v1["id"]).status_code == 200
            wait_until(lambda: get_round(api, rnd["id"], admin=admin)["state"] == "committed",
                       what="embedded commit")
    finally:
        proc.stop()
    assert (tmp_path / "embedded" / "fedface.db").is_file()
    lines = [json.loads(line) for line in (tmp_path / "embedded.log").read_text().splitlines() if line.startswith("{")]
    refused = [e for e in lines if e.get("event") == "request_refused" and e.get("code") == "invalid_tensors"]
    assert refused and refused[0]["round_id"] == rnd["id"] and refused[0]["device_id"] == dev.device_id
    assert any(e.get("event") == "round_committed" and e.get("round_id") == rnd["id"] for e in lines)
