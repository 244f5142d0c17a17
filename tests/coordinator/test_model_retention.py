"""Model-version retention on Postgres: the newest versions, the served lineage and the active round's base
keep their weights; the others are pruned (rows and metrics stay), their blobs go with the collection, and
using a pruned version answers 410 version_pruned. Rounds and refusals over real HTTP; passes in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from coordinator.context import AppContext, build_context
from coordinator.services.blob_gc import GcPolicy, collect
from coordinator.settings import Settings
from storage.db import utcnow
from tests.support.fleet import ADMIN, delta_bytes, enroll, get_round, register_model, start_round, tiny_model
from tests.support.live import serving, wait_until

LATER = timedelta(hours=3)  # past the grace period, so every unreferenced blob is old enough to go


@pytest.fixture
def keep_two(settings: Settings) -> Settings:
    return settings.model_copy(update={"keep_model_versions": 2})


@pytest.fixture
def api(keep_two: Settings) -> Iterator[httpx.Client]:
    with serving(keep_two) as client:
        yield client


@pytest.fixture
async def ctx(keep_two: Settings) -> AsyncIterator[AppContext]:
    context = build_context(keep_two)
    yield context
    await context.close()


def _versions(api: httpx.Client) -> dict[int, dict[str, Any]]:
    return {v["id"]: v for v in api.get("/v1/admin/models", headers=ADMIN).json()}


def _child_by_round(api: httpx.Client, base_id: int) -> int:
    (device,) = enroll(api, 1)
    rnd = start_round(api, algorithm="fedavg-plain", target_devices=1, min_devices=1, over_selection=1.0)
    assert device.check_in()["status"] == "task"
    r = device.submit(rnd["id"], delta_bytes(1, embedding=False), num_samples=3, base_version=base_id)
    assert r.status_code == 200, r.text
    wait_until(lambda: get_round(api, rnd["id"])["state"] == "committed", what="round commit")
    return int(get_round(api, rnd["id"])["result_version_id"])


async def test_retention_prunes_outside_the_newest_and_the_served_lineage(api: httpx.Client,
                                                                          ctx: AppContext) -> None:
    v1 = register_model(api, tiny_model(1), embedding_dim=None)["id"]
    v2 = _child_by_round(api, v1)  # served, parent v1
    v3 = register_model(api, tiny_model(3), embedding_dim=None, serve=False)["id"]
    v4 = register_model(api, tiny_model(4), embedding_dim=None, serve=False)["id"]
    v5 = register_model(api, tiny_model(5), embedding_dim=None, serve=False)["id"]
    versions = _versions(api)
    shas = {v: versions[v]["sha256"] for v in (v1, v2, v3, v4, v5)}
    policy = GcPolicy.of(ctx.settings)

    dry = await collect(ctx.sessions, ctx.blobs, policy, now=utcnow() + LATER, dry_run=True)
    assert dry.versions_pruned == [v3]  # kept: the newest two (v4, v5) and the served lineage (v2 -> v1)
    assert _versions(api)[v3]["pruned_at"] is None  # a dry run changes nothing
    assert api.get(f"/v1/admin/models/{v3}/weights", headers=ADMIN).status_code == 200

    report = await collect(ctx.sessions, ctx.blobs, policy, now=utcnow() + LATER)
    assert report.versions_pruned == [v3]
    assert shas[v3] in {b.key for b in report.blobs_removed}
    kept = {b.key async for b in ctx.blobs.list_blobs()}
    assert {shas[v] for v in (v1, v2, v4, v5)} <= kept and shas[v3] not in kept

    after = _versions(api)
    assert after[v3]["pruned_at"] is not None and after[v3]["metrics"] == versions[v3]["metrics"]
    for refused in (api.get(f"/v1/admin/models/{v3}/weights", headers=ADMIN),
                    api.post(f"/v1/admin/models/{v3}/promote", headers=ADMIN)):
        assert refused.status_code == 410 and refused.json()["code"] == "version_pruned", refused.text
    assert _versions(api)[v2]["served"]  # the refused promotion changed nothing

    # Serving v5 moves the lineage: the next pass releases v1 and v2, never v5's or the newest two's weights.
    assert api.post(f"/v1/admin/models/{v5}/promote", headers=ADMIN).status_code == 200
    again = await collect(ctx.sessions, ctx.blobs, policy, now=utcnow() + LATER)
    assert sorted(again.versions_pruned) == [v1, v2]
    assert api.get(f"/v1/admin/models/{v5}/weights", headers=ADMIN).status_code == 200
    assert api.get(f"/v1/admin/models/{v4}/weights", headers=ADMIN).status_code == 200


async def test_an_active_rounds_base_keeps_its_weights(api: httpx.Client, ctx: AppContext) -> None:
    v1 = register_model(api, tiny_model(1), embedding_dim=None)["id"]
    register_model(api, tiny_model(2), embedding_dim=None, serve=False)
    register_model(api, tiny_model(3), embedding_dim=None, serve=False)
    rnd = start_round(api, algorithm="fedavg-plain", target_devices=1, min_devices=1)
    assert api.post(f"/v1/admin/models/{v1 + 2}/promote", headers=ADMIN).status_code == 409  # round active
    report = await collect(ctx.sessions, ctx.blobs, GcPolicy.of(ctx.settings), now=utcnow() + LATER)
    assert v1 not in report.versions_pruned  # served and the round's base
    (device,) = enroll(api, 1)
    assert device.check_in()["status"] == "task"
    r = device.api.get(f"/v1/models/{v1}/weights", headers=device.auth)
    assert r.status_code == 200, r.text
    assert api.post(f"/v1/admin/rounds/{rnd['id']}/cancel", headers=ADMIN).status_code == 200
