"""State survives a crash: a coordinator killed mid-round is replaced by a new
process on the same Postgres, Redis and blob store, and the round completes
with every update that was accepted before the crash."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import create_engine, text

from coordinator.settings import Settings
from fedface_common.tensors import decode
from tests.conftest import ADMIN_TOKEN, REDIS_URL
from tests.support.fleet import ADMIN, delta, delta_bytes, enroll, get_round, register_model, start_round, tiny_model
from tests.support.live import LiveServer, serving, wait_until
from tests.support.proc import CoordinatorProcess


@pytest.fixture
def proc_env(database_url: str, redis_prefix: str, tmp_path: Path) -> dict[str, str]:
    return {
        "FEDFACE_DATABASE_URL": database_url, "FEDFACE_REDIS_URL": REDIS_URL, "FEDFACE_REDIS_PREFIX": redis_prefix,
        "FEDFACE_DATA_DIR": str(tmp_path / "data"), "FEDFACE_ADMIN_TOKEN": ADMIN_TOKEN,
        "FEDFACE_LEASE_TTL_S": "1.0", "FEDFACE_TICK_INTERVAL_S": "0.05",
    }


@pytest.fixture
def processes() -> Iterator[list[CoordinatorProcess]]:
    started: list[CoordinatorProcess] = []
    yield started
    for p in started:
        p.stop()


def test_round_completes_after_the_coordinator_is_killed_mid_round(
    proc_env: dict[str, str], tmp_path: Path, processes: list[CoordinatorProcess]
) -> None:
    first = CoordinatorProcess(proc_env, tmp_path / "a.log").start()
    processes.append(first)
    with httpx.Client(base_url=first.url, timeout=30) as api:
        base = tiny_model()
        v1 = register_model(api, base)
        devices = enroll(api, 3)
        rnd = start_round(api, target_devices=3, min_devices=3)
        for d in devices:
            assert d.check_in()["status"] == "task"
        for i, d in enumerate(devices[:2]):
            assert d.submit(rnd["id"], delta_bytes(i), num_samples=i + 1, base_version=v1["id"]).status_code == 200
    first.kill()

    second = CoordinatorProcess(proc_env, tmp_path / "b.log").start()
    processes.append(second)
    with httpx.Client(base_url=second.url, timeout=30) as api:
        for d in devices:
            d.api = api
        assert get_round(api, rnd["id"])["accepted"] == 2
        task = devices[2].check_in()  # the same task, from the new process
        assert task["task"]["round_id"] == rnd["id"]
        r = devices[2].submit(rnd["id"], delta_bytes(2), num_samples=3, base_version=v1["id"])
        assert r.status_code == 200, r.text
        wait_until(lambda: get_round(api, rnd["id"])["state"] == "committed", what="commit after restart")
        done = get_round(api, rnd["id"])
        got = decode(api.get(f"/v1/admin/models/{done['result_version_id']}/weights", headers=ADMIN).content)
    weights = np.array([1, 2, 3]) / 6
    expected = base["layer.weight"] + sum(w * delta(i)["layer.weight"] for i, w in enumerate(weights))
    np.testing.assert_allclose(got["layer.weight"], expected, rtol=1e-5, atol=1e-6)


def test_aggregation_interrupted_by_a_crash_is_redone_once(settings: Settings, database_url: str) -> None:
    """A round left in `aggregating` (the process died while folding) is
    aggregated by the next driver; the old version stays served until then."""
    with serving(settings, run_driver=False) as api:
        v1 = register_model(api)
        a, b = enroll(api, 2)
        rnd = start_round(api, target_devices=2, min_devices=2)
        a.check_in()
        b.check_in()
        a.submit(rnd["id"], delta_bytes(1), base_version=v1["id"])
        b.submit(rnd["id"], delta_bytes(2), base_version=v1["id"])
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.execute(text("UPDATE rounds SET state = 'aggregating', closed_at = now() WHERE id = :id"),
                     {"id": rnd["id"]})
    engine.dispose()

    with serving(settings) as api:
        wait_until(lambda: get_round(api, rnd["id"])["state"] == "committed", what="re-aggregation")
        versions = api.get("/v1/admin/models", headers=ADMIN).json()
        assert [v["id"] for v in versions if v["round_id"] == rnd["id"]] == [get_round(api, rnd["id"])[
            "result_version_id"]]
        assert get_round(api, rnd["id"])["accepted"] == 2


def test_losing_redis_state_loses_no_accepted_update(server: LiveServer, redis_prefix: str) -> None:
    """Redis holds coordination state only: wipe it mid-round and the round
    still commits with every accepted update."""
    import redis as redis_sync

    with httpx.Client(base_url=server.url, timeout=30) as api:
        base = tiny_model()
        v1 = register_model(api, base)
        a, b = enroll(api, 2)
        rnd = start_round(api, target_devices=2, min_devices=2)
        a.check_in()
        b.check_in()
        assert a.submit(rnd["id"], delta_bytes(1), num_samples=1, base_version=v1["id"]).status_code == 200
        client = redis_sync.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=redis_prefix + "*"))
        assert keys  # the lease, counters and rate limits were there
        client.delete(*keys)
        client.close()
        assert b.submit(rnd["id"], delta_bytes(2), num_samples=3, base_version=v1["id"]).status_code == 200
        wait_until(lambda: get_round(api, rnd["id"])["state"] == "committed", what="commit after losing Redis")
        done = get_round(api, rnd["id"])
        got = decode(api.get(f"/v1/admin/models/{done['result_version_id']}/weights", headers=ADMIN).content)
    expected = base["layer.bias"] + (1 * delta(1)["layer.bias"] + 3 * delta(2)["layer.bias"]) / 4
    np.testing.assert_allclose(got["layer.bias"], expected, rtol=1e-5, atol=1e-6)
