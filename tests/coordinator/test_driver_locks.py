"""The driver's passes do not queue behind uploads.

Every accepted update wakes the driver. Its close takes the round row FOR
UPDATE, and Postgres queues later share lockers (every upload's insert) behind
a waiting exclusive one, so a pass that locked on every wake stalled intake in
convoys. A pass over a round that is not due must not lock at all; a round
that is due is still closed under the lock."""

from __future__ import annotations

import asyncio

import psycopg

from coordinator.context import build_context
from coordinator.engine.driver import RoundDriver
from coordinator.settings import Settings
from storage.repositories.rounds import RoundRepository
from tests.support.fleet import delta_bytes, enroll, get_round, register_model, start_round
from tests.support.live import serving

PASS_BOUND_S = 10.0  # a pass takes milliseconds; one stuck on the lock never ends


def _upload_holding_its_share_lock(database_url: str, round_id: int) -> psycopg.Connection:
    """A transaction in the state of an upload between its insert and its commit."""
    conn = psycopg.connect(database_url)
    conn.execute("SELECT state FROM rounds WHERE id = %s FOR SHARE", (round_id,))
    return conn


async def _one_pass(settings: Settings, round_id: int) -> str:
    ctx = build_context(settings)
    try:
        driver = RoundDriver(ctx)
        await asyncio.wait_for(driver.tick(), timeout=PASS_BOUND_S)
        async with ctx.sessions() as session:
            rnd = await RoundRepository(session).get(round_id)
            assert rnd is not None
            return rnd.state
    finally:
        await ctx.close()


def test_a_pass_over_a_round_not_due_does_not_wait_for_uploads(settings: Settings, database_url: str) -> None:
    with serving(settings, run_driver=False) as api:
        v1 = register_model(api)
        (a,) = enroll(api, 1)
        rnd = start_round(api, target_devices=2, min_devices=1)
        a.check_in()
        a.submit(rnd["id"], delta_bytes(1), base_version=v1["id"])
        upload = _upload_holding_its_share_lock(database_url, rnd["id"])
        try:
            assert asyncio.run(_one_pass(settings, rnd["id"])) == "collecting"
        finally:
            upload.rollback()
            upload.close()
        assert get_round(api, rnd["id"])["state"] == "collecting"


def test_a_due_round_is_still_closed_by_a_pass(settings: Settings) -> None:
    with serving(settings, run_driver=False) as api:
        v1 = register_model(api)
        a, b = enroll(api, 2)
        rnd = start_round(api, target_devices=2, min_devices=1)
        for device, seed in ((a, 1), (b, 2)):
            device.check_in()
            device.submit(rnd["id"], delta_bytes(seed), base_version=v1["id"])
        assert asyncio.run(_one_pass(settings, rnd["id"])) == "committed"
