"""Postgres and Redis stop mid-round and come back. While one is down every
device call is answered 503 with Retry-After (or, where the call does not
need it, served), never 500; once it is back, calls succeed at once (no
stale pooled connection fails one) and the round commits with every
acknowledged update counted exactly once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest

from coordinator.settings import Settings
from device_agent.client import DeviceClient
from fedface_common.tensors import decode
from tests.conftest import ADMIN_TOKEN, REDIS_URL
from tests.support.faults import EXACT_MEAN, AnswerLog, assert_unavailable, concurrently
from tests.support.fleet import (
    ADMIN,
    Device,
    delta,
    delta_bytes,
    enroll,
    get_round,
    register_model,
    start_round,
    tiny_model,
)
from tests.support.live import LiveServer, wait_until
from tests.support.services import PostgresCluster, RedisServer

pytestmark = pytest.mark.faults

DEVICES = 6


def _settings(tmp_path: Path, database_url: str, redis_url: str, redis_prefix: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", database_url=database_url, redis_url=redis_url, redis_prefix=redis_prefix,
        admin_token=ADMIN_TOKEN,  # type: ignore[arg-type]
        tick_interval_s=0.05, lease_ttl_s=2.0, idle_retry_s=5.0, outage_retry_after_s=1,
    )


@contextmanager
def _served(settings: Settings, answers: AnswerLog) -> Iterator[httpx.Client]:
    srv = LiveServer(settings)
    srv.start()
    try:
        with answers.client(srv.url) as api:
            yield api
    finally:
        srv.stop()


def _check_in(api: httpx.Client, device: Device) -> httpx.Response:
    return api.post("/v1/check-in", headers=device.auth)


def _ready(api: httpx.Client) -> bool:
    return api.get("/readyz").status_code == 200


def _agent(api: httpx.Client, device: Device, answers: AnswerLog) -> DeviceClient:
    """The device agent's own client: it must ride out the outage on 503 and Retry-After."""
    return DeviceClient(str(api.base_url), device.credential, transport=answers.transport(), max_attempts=60,
                        max_retry_after_s=2.0, backoff_max_s=1.0)


def _assert_committed_with_all(api: httpx.Client, round_id: int, base: dict[str, np.ndarray]) -> None:
    """Committed once, with each device's update weighted by its sample count exactly once."""
    wait_until(lambda: get_round(api, round_id)["state"] == "committed", timeout=60, what="round commit")
    done = get_round(api, round_id)
    assert done["accepted"] == DEVICES
    versions = [v for v in api.get("/v1/admin/models", headers=ADMIN).json() if v["round_id"] == round_id]
    assert [v["id"] for v in versions] == [done["result_version_id"]]
    got = decode(api.get(f"/v1/admin/models/{done['result_version_id']}/weights", headers=ADMIN).content)
    weights = np.arange(1, DEVICES + 1) / sum(range(1, DEVICES + 1))
    expected = base["layer.weight"] + sum(w * delta(i)["layer.weight"] for i, w in enumerate(weights))
    np.testing.assert_allclose(got["layer.weight"], expected, rtol=1e-5, atol=1e-6)


# fast: Postgres ends every session with an error and shuts down; immediate: as if it crashed.
@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgres_stopped_mid_round(
    mode: str, private_postgres: PostgresCluster, redis_prefix: str, tmp_path: Path, answers: AnswerLog
) -> None:
    settings = _settings(tmp_path, private_postgres.url, REDIS_URL, redis_prefix)
    with _served(settings, answers) as api:
        base = tiny_model()
        v1 = register_model(api, base)["id"]
        devices = enroll(api, DEVICES)
        rnd = start_round(api, target_devices=DEVICES, min_devices=DEVICES, params=EXACT_MEAN)["id"]
        # Check in side by side so that the pool holds several connections to the server about to go.
        assert [a["status"] for a in concurrently(lambda d: d.check_in(), devices)] == ["task"] * DEVICES
        for i in (0, 1):
            assert devices[i].submit(rnd, delta_bytes(i), num_samples=i + 1, base_version=v1).status_code == 200

        # Two devices submit through the agent's client as the server stops: each lands before,
        # during or after the stop, and the client carries it through the outage.
        results: dict[int, int] = {}

        def submit_through(i: int) -> None:
            with _agent(api, devices[i], answers) as client:
                results[i] = client.submit(rnd, delta_bytes(i), num_samples=i + 1, base_version=v1).update_id

        riders = [threading.Thread(target=submit_through, args=(i,)) for i in (2, 3)]
        for t in riders:
            t.start()
        private_postgres.stop(mode)

        for d in devices:
            assert_unavailable(_check_in(api, d), "database")
        assert_unavailable(devices[4].submit(rnd, delta_bytes(4), num_samples=5, base_version=v1), "database")
        assert_unavailable(api.get(f"/v1/models/{v1}/weights", headers=devices[4].auth), "database")
        assert_unavailable(api.post("/v1/enroll", json={"token": "ffe_nothing"}), "database")
        assert_unavailable(api.get(f"/v1/admin/rounds/{rnd}", headers=ADMIN), "database")
        ready = api.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"] != "ok"

        private_postgres.start()
        wait_until(lambda: _ready(api), timeout=30, what="/readyz after Postgres is back")
        # The pool still holds connections to the stopped server: none of them may fail a call.
        statuses = concurrently(lambda i: _check_in(api, devices[i % DEVICES]).status_code, range(60))
        assert statuses == [200] * 60
        for t in riders:
            t.join(timeout=60)
        assert sorted(results) == [2, 3]
        for i in (4, 5):
            assert devices[i].submit(rnd, delta_bytes(i), num_samples=i + 1, base_version=v1).status_code == 200
        _assert_committed_with_all(api, rnd, base)

        # A restart no request noticed: every pooled connection is dead, and the first calls find out.
        private_postgres.stop(mode)
        private_postgres.start()
        statuses = concurrently(lambda i: _check_in(api, devices[i % DEVICES]).status_code, range(60))
        assert statuses == [200] * 60
    assert answers.server_errors() == []


def test_redis_stopped_mid_round(
    private_redis: RedisServer, database_url: str, tmp_path: Path, answers: AnswerLog
) -> None:
    settings = _settings(tmp_path, database_url, private_redis.url, "fftest:outage:")
    with _served(settings, answers) as api:
        base = tiny_model()
        v1 = register_model(api, base)["id"]
        devices = enroll(api, DEVICES)
        rnd = start_round(api, target_devices=DEVICES, min_devices=DEVICES, params=EXACT_MEAN)["id"]
        assert [a["status"] for a in concurrently(lambda d: d.check_in(), devices)] == ["task"] * DEVICES
        for i in (0, 1):
            assert devices[i].submit(rnd, delta_bytes(i), num_samples=i + 1, base_version=v1).status_code == 200

        private_redis.stop()
        for d in devices:
            assert_unavailable(_check_in(api, d), "redis")
        ready = api.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["redis"] != "ok"
        # Accepting an update needs only Postgres and the blob store: it is not refused for Redis.
        r = devices[2].submit(rnd, delta_bytes(2), num_samples=3, base_version=v1)
        assert r.status_code == 200, r.text

        private_redis.start()  # empty: no persistence, as after a crash
        wait_until(lambda: _ready(api), timeout=30, what="/readyz after Redis is back")
        statuses = concurrently(lambda i: _check_in(api, devices[i % DEVICES]).status_code, range(60))
        assert statuses == [200] * 60
        for i in (3, 4, 5):
            assert devices[i].submit(rnd, delta_bytes(i), num_samples=i + 1, base_version=v1).status_code == 200
        _assert_committed_with_all(api, rnd, base)
    assert answers.server_errors() == []
