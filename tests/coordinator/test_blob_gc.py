"""The blob collector against a real Postgres: it removes exactly the
unreferenced blobs older than the grace period and the orphaned staging files,
never a referenced one, and lets finished rounds' updates go after the
retention window. Rounds run over real HTTP; passes run in-process. Ages come
from back-dating (tests/support/blob_age.py) or from the injected clock, never
from waiting."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydantic import SecretStr
from sqlalchemy import create_engine, text

from coordinator.context import AppContext, build_context
from coordinator.services.blob_gc import GcPolicy, collect
from coordinator.settings import Settings
from fedface_common.tensors import encode
from fedface_common.wire import CLASS_CENTRES_TENSOR
from storage.blobs import BlobStore
from storage.db import utcnow
from storage.models import ModelVersion
from storage.repositories.models_repo import ModelVersionRepository
from tests.support.blob_age import backdate, backdate_staging
from tests.support.fleet import ADMIN, Device, delta_bytes, enroll, get_round, register_model, start_round
from tests.support.live import serving, wait_until

OLD = timedelta(hours=3)  # past the default grace period (2 h) and staging age (30 min)
# Fixed bounds: replicas fold partial sums from the first update on (adaptive ones wait for a window).
NO_BOUNDS = {"robust": {"norm_bound": "off", "sample_cap": "off"}}


@pytest.fixture
def gc_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"partial_fold_interval_s": 0.05})


@pytest.fixture
def gc_api(gc_settings: Settings) -> Iterator[httpx.Client]:
    with serving(gc_settings) as client:
        yield client


@pytest.fixture
async def ctx(gc_settings: Settings) -> AsyncIterator[AppContext]:
    context = build_context(gc_settings)
    yield context
    await context.close()


def _sql(database_url: str, query: str, **params: Any) -> list[Any]:
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        rows = list(conn.execute(text(query), params).all())
    engine.dispose()
    return rows


def _partial_shas(database_url: str, round_id: int) -> dict[str, list[int]]:
    rows = _sql(database_url, "SELECT blob_sha256, update_ids FROM partial_aggregates WHERE round_id = :r",
                r=round_id)
    return {r[0]: list(r[1]) for r in rows}


async def _keys(store: BlobStore) -> set[str]:
    return {b.key async for b in store.list_blobs()}


def _submit(device: Device, round_id: int, seed: int, base_version: int) -> tuple[int, str]:
    r = device.submit(round_id, delta_bytes(seed), base_version=base_version)
    assert r.status_code == 200, r.text
    return int(r.json()["update_id"]), str(r.json()["sha256"])


@dataclass
class History:
    """Round 1 committed (v1 -> v2); round 2 collecting, with a superseded partial sum."""

    v1: dict[str, Any]
    v2_sha: str
    centres_sha: str
    round1_updates: set[str]
    round2_updates: set[str]
    superseded_partial: str
    round2: int
    last_device: Device


def _make_history(api: httpx.Client, database_url: str) -> History:
    v1 = register_model(api)
    centres = encode({CLASS_CENTRES_TENSOR: np.ones((3, 4), np.float32)})
    r = api.put(f"/v1/admin/models/{v1['id']}/class-centres", content=centres, headers=ADMIN)
    assert r.status_code == 200, r.text
    a, b, c, d, e = enroll(api, 5)

    rnd1 = start_round(api, target_devices=2, min_devices=2, over_selection=1.0, params=NO_BOUNDS)
    assert a.check_in()["status"] == b.check_in()["status"] == "task"
    round1 = {_submit(a, rnd1["id"], 1, v1["id"])[1], _submit(b, rnd1["id"], 2, v1["id"])[1]}
    wait_until(lambda: get_round(api, rnd1["id"])["state"] == "committed", what="round 1 commit")
    v2 = api.get(f"/v1/admin/models/{get_round(api, rnd1['id'])['result_version_id']}", headers=ADMIN).json()

    rnd2 = start_round(api, target_devices=3, min_devices=3, over_selection=1.0, params=NO_BOUNDS)
    assert c.check_in()["status"] == d.check_in()["status"] == e.check_in()["status"] == "task"
    u3, sha3 = _submit(c, rnd2["id"], 3, v2["id"])
    wait_until(lambda: any(u3 in ids for ids in _partial_shas(database_url, rnd2["id"]).values()),
               what="the first partial sum")
    (first_partial,) = _partial_shas(database_url, rnd2["id"])
    u4, sha4 = _submit(d, rnd2["id"], 4, v2["id"])
    wait_until(lambda: any(u4 in ids for ids in _partial_shas(database_url, rnd2["id"]).values()),
               what="the partial sum that replaces it")
    return History(v1, v2["sha256"], hashlib.sha256(centres).hexdigest(), round1, {sha3, sha4}, first_partial,
                   rnd2["id"], e)


def _staging_orphans(store: BlobStore) -> tuple[str, str]:
    """A staging file a killed upload left behind, and one of an upload in progress."""
    dead, live = store.staging_prefix + "killed-mid-upload", store.staging_prefix + "in-progress"
    (store.staging_dir / dead).write_bytes(b"half a body")
    (store.staging_dir / live).write_bytes(b"still arriving")
    backdate_staging(store, dead, utcnow() - OLD)
    return dead, live


async def test_removes_exactly_the_old_unreferenced_blobs_and_dead_staging_files(
    gc_api: httpx.Client, ctx: AppContext, database_url: str
) -> None:
    store = ctx.blobs
    h = _make_history(gc_api, database_url)
    garbage = {await store.put_bytes(f"a losing duplicate body {i}".encode()) for i in range(3)}
    everything = await _keys(store)
    for key in everything:
        backdate(store, key, utcnow() - OLD)
    young = await store.put_bytes(b"an upload whose row is about to commit")
    dead, live = _staging_orphans(store)

    referenced = ({h.v1["sha256"], h.v2_sha, h.centres_sha} | h.round1_updates | h.round2_updates
                  | {r[0] for r in _sql(database_url, "SELECT blob_sha256 FROM partial_aggregates")})
    expected = everything - referenced
    assert garbage | {h.superseded_partial} <= expected

    policy = GcPolicy.of(ctx.settings)
    dry = await collect(ctx.sessions, store, policy, dry_run=True)
    assert {o.key for o in dry.blobs_removed} == expected
    assert [o.key for o in dry.staging_removed] == [dead]
    assert await _keys(store) == everything | {young}  # the dry run removed nothing
    assert {f.key for f in await store.list_staging()} == {dead, live}

    done = await collect(ctx.sessions, store, policy)
    assert {o.key for o in done.blobs_removed} == expected
    assert done.bytes_removed == sum(o.size_bytes for o in [*done.blobs_removed, *done.staging_removed])
    assert (done.blobs_young, done.blobs_referenced, done.blobs_recommitted) == (1, len(everything & referenced), 0)
    assert await _keys(store) == (everything & referenced) | {young}
    assert {f.key for f in await store.list_staging()} == {live}

    # The collecting round still aggregates from its partial sum and updates.
    _submit(h.last_device, h.round2, 5, int(get_round(gc_api, h.round2)["base_version_id"]))
    wait_until(lambda: get_round(gc_api, h.round2)["state"] == "committed", what="round 2 commit")


async def test_a_finished_rounds_updates_go_after_the_retention_window(
    gc_api: httpx.Client, ctx: AppContext, database_url: str
) -> None:
    store = ctx.blobs
    h = _make_history(gc_api, database_url)
    policy = GcPolicy.of(ctx.settings)
    retention = timedelta(seconds=policy.update_retention_s)
    versions = {h.v1["sha256"], h.v2_sha, h.centres_sha}
    round2_partial = set(_partial_shas(database_url, h.round2))

    # Everything is past the grace period, round 1 not yet past its retention window.
    within = await collect(ctx.sessions, store, policy, now=utcnow() + retention - timedelta(hours=1))
    assert h.round1_updates <= await _keys(store)
    assert h.superseded_partial in {o.key for o in within.blobs_removed}

    later = await collect(ctx.sessions, store, policy, now=utcnow() + retention + timedelta(hours=1))
    assert h.round1_updates <= {o.key for o in later.blobs_removed}
    # The served version's lineage and everything the collecting round needs stay.
    assert versions | h.round2_updates | round2_partial <= await _keys(store)
    rows = _sql(database_url, "SELECT count(*) FROM updates u JOIN rounds r ON r.id = u.round_id WHERE r.state = "
                "'committed'")
    assert rows[0][0] == 2  # the rows stay for history; only their blobs went


@pytest.mark.parametrize("backend", ["local", "s3"])
async def test_bytes_committed_again_after_the_listing_stay(
    backend: str, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    if backend == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        settings = settings.model_copy(update={
            "blob_backend": "s3", "s3_endpoint_url": endpoint, "s3_bucket": f"fedface-gc-{uuid.uuid4().hex[:12]}",
            "s3_access_key_id": SecretStr("testing"), "s3_secret_access_key": SecretStr("testing")})
    ctx = build_context(settings)
    try:
        store = ctx.blobs
        kept = await store.put_bytes(b"weights a version row references")
        garbage = await store.put_bytes(b"a superseded partial sum")
        resent = await store.put_bytes(b"an update sent again with the same bytes")
        young = await store.put_bytes(b"a body stored a moment ago")
        for key in (kept, garbage, resent):
            backdate(store, key, utcnow() - OLD)
        async with ctx.sessions() as session, session.begin():
            await ModelVersionRepository(session).add(ModelVersion(
                blob_sha256=kept, size_bytes=1, manifest={}, tensor_spec={}, metrics={}))

        listing = store.list_blobs

        async def listed_then_resent() -> AsyncIterator[Any]:
            async for blob in listing():
                yield blob
            # The upload lands after the listing, before the removal; its row has not committed.
            await store.put_bytes(b"an update sent again with the same bytes")

        monkeypatch.setattr(store, "list_blobs", listed_then_resent)
        report = await collect(ctx.sessions, store, GcPolicy.of(ctx.settings))
        assert [o.key for o in report.blobs_removed] == [garbage]
        assert (report.blobs_recommitted, report.blobs_referenced, report.blobs_young) == (1, 1, 1)
        assert not await store.exists(garbage)
        assert all([await store.exists(k) for k in (kept, resent, young)])
    finally:
        await ctx.close()
