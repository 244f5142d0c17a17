"""State survives a crash: a round left mid-aggregation is aggregated once by
the next driver, and losing Redis loses no accepted update. A coordinator
process killed with kill -9 at each state of a round is in
tests/faults/test_crash.py."""

from __future__ import annotations

import httpx
import numpy as np
from sqlalchemy import create_engine, text

from coordinator.settings import Settings
from fedface_common.tensors import decode
from tests.conftest import REDIS_URL
from tests.support.faults import EXACT_MEAN
from tests.support.fleet import ADMIN, delta, delta_bytes, enroll, get_round, register_model, start_round, tiny_model
from tests.support.live import LiveServer, serving, wait_until


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
        rnd = start_round(api, target_devices=2, min_devices=2, params=EXACT_MEAN)
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
