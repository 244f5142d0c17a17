"""Three coordinator processes share one Postgres, Redis and S3-compatible
store. Devices spread over them; one replica is killed mid-round. The round
commits once, with every acknowledged update, and the new model is the
weighted mean of exactly those updates."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import create_engine, text

from fedface_common.tensors import decode
from tests.conftest import ADMIN_TOKEN, REDIS_URL
from tests.support.fleet import ADMIN, delta, delta_bytes, enroll, get_round, register_model, start_round, tiny_model
from tests.support.live import wait_until
from tests.support.proc import CoordinatorProcess


@pytest.fixture
def replicas(
    database_url: str, redis_prefix: str, s3_endpoint: str, tmp_path: Path
) -> Iterator[list[CoordinatorProcess]]:
    env = {
        "FEDFACE_DATABASE_URL": database_url, "FEDFACE_REDIS_URL": REDIS_URL, "FEDFACE_REDIS_PREFIX": redis_prefix,
        "FEDFACE_ADMIN_TOKEN": ADMIN_TOKEN, "FEDFACE_LEASE_TTL_S": "1.0", "FEDFACE_TICK_INTERVAL_S": "0.05",
        "FEDFACE_BLOB_BACKEND": "s3", "FEDFACE_S3_ENDPOINT_URL": s3_endpoint, "FEDFACE_S3_BUCKET": "fedface-test",
        "FEDFACE_S3_ACCESS_KEY_ID": "test", "FEDFACE_S3_SECRET_ACCESS_KEY": "test",
    }
    procs = [CoordinatorProcess({**env, "FEDFACE_REPLICA_ID": f"r{i}", "FEDFACE_DATA_DIR": str(tmp_path / f"r{i}")},
                                tmp_path / f"r{i}.log") for i in range(3)]
    for p in procs:
        p.start()
    yield procs
    for p in procs:
        p.stop()


def _partials(database_url: str, round_id: int) -> dict[str, list[int]]:
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT replica_id, update_ids FROM partial_aggregates WHERE round_id = :r"),
                            {"r": round_id}).all()
    engine.dispose()
    return {r[0]: list(r[1]) for r in rows}


def test_replica_killed_mid_round_every_acknowledged_update_counts_once(
    replicas: list[CoordinatorProcess], database_url: str
) -> None:
    clients = [httpx.Client(base_url=p.url, timeout=30) for p in replicas]
    try:
        base = tiny_model()
        v1 = register_model(clients[0], base)
        devices = enroll(clients[1], 9)
        # A window of three fixes the adaptive bounds early, so replicas fold partial sums while the round
        # collects; multipliers this large leave every honest update whole, so the mean is checked exactly.
        robust = {"window": 3, "norm_multiplier": 1000, "sample_multiplier": 1000}
        rnd = start_round(clients[2], target_devices=9, min_devices=9, params={"robust": robust})
        samples = {}
        for i, dev in enumerate(devices):
            dev.api = clients[i % 3]  # spread the fleet over the replicas
            assert dev.check_in()["status"] == "task"
        # Six devices submit (two per replica) and are acknowledged.
        for i in range(6):
            samples[i] = i + 1
            r = devices[i].submit(rnd["id"], delta_bytes(i), num_samples=samples[i], base_version=v1["id"])
            assert r.status_code == 200, r.text
        # Replicas fold what they accepted in the background.
        wait_until(lambda: sum(len(v) for v in _partials(database_url, rnd["id"]).values()) >= 2,
                   what="partial sums")
        replicas[1].kill()
        # The rest of the fleet fails over to the live replicas.
        for i in range(6, 9):
            samples[i] = i + 1
            dev = devices[i]
            dev.api = clients[0] if i % 2 else clients[2]
            r = dev.submit(rnd["id"], delta_bytes(i), num_samples=samples[i], base_version=v1["id"])
            assert r.status_code == 200, r.text
        wait_until(lambda: get_round(clients[0], rnd["id"])["state"] == "committed", timeout=30,
                   what="commit after a replica died")
        done = get_round(clients[2], rnd["id"])
        assert done["accepted"] == 9
        metrics = done["metrics"]
        print("aggregation metrics:", metrics)
        assert metrics["updates"] == 9
        assert metrics["folded_from_partials"] + metrics["folded_at_close"] == 9
        assert metrics["folded_from_partials"] >= 2
        versions = clients[0].get("/v1/admin/models", headers=ADMIN).json()
        assert [v["id"] for v in versions if v["round_id"] == rnd["id"]] == [done["result_version_id"]]
        got = decode(clients[2].get(f"/v1/admin/models/{done['result_version_id']}/weights", headers=ADMIN).content)
    finally:
        for c in clients:
            c.close()
    total = sum(samples.values())
    for name in ("layer.weight", "layer.bias"):
        expected = base[name] + sum(n * delta(i)[name].astype(np.float64) for i, n in samples.items()) / total
        np.testing.assert_allclose(got[name], expected, rtol=1e-5, atol=1e-6)
