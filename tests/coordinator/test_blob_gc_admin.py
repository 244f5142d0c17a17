"""Blob collection as an operator and the fleet meet it: the admin route (admin
credential only) over real HTTP, the scheduled pass of a live coordinator, and
the lease that lets one replica collect at a time."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx

from coordinator.context import build_context
from coordinator.engine.blob_collector import BlobCollector
from coordinator.settings import Settings
from storage.blobs import LocalBlobStore
from storage.db import utcnow
from tests.support.blob_age import backdate
from tests.support.fleet import ADMIN, enroll, register_model
from tests.support.live import LiveServer, wait_until

OLD = timedelta(hours=3)


def _old_blob(store: LocalBlobStore, data: bytes) -> str:
    key = asyncio.run(store.put_bytes(data))
    backdate(store, key, utcnow() - OLD)
    return key


def test_the_admin_route_needs_the_admin_credential(api: httpx.Client, settings: Settings) -> None:
    store = LocalBlobStore(settings.resolved_blob_dir)
    garbage = _old_blob(store, b"nobody references this")
    (device,) = enroll(api, 1)
    for headers in ({}, {"Authorization": "Bearer not-the-admin-token"}, device.auth):
        r = api.post("/v1/admin/blobs/gc", headers=headers)
        assert r.status_code == 401 and r.json()["code"] == "unauthorized", r.text
    assert store.path_of(garbage).is_file()

    dry = api.post("/v1/admin/blobs/gc", params={"dry_run": "true"}, headers=ADMIN)
    assert dry.status_code == 200 and dry.json()["dry_run"] is True
    assert [o["key"] for o in dry.json()["blobs_removed"]] == [garbage]
    assert store.path_of(garbage).is_file()

    done = api.post("/v1/admin/blobs/gc", headers=ADMIN).json()
    assert [o["key"] for o in done["blobs_removed"]] == [garbage] and not store.path_of(garbage).exists()
    audit = api.get("/v1/admin/audit", headers=ADMIN).json()
    assert [(e["action"], e["details"]["blobs_removed"]) for e in audit if e["action"] == "blobs.gc"] == [
        ("blobs.gc", 1)]


def test_a_live_coordinator_collects_on_its_schedule(settings: Settings) -> None:
    srv = LiveServer(settings.model_copy(update={"blob_gc_interval_s": 0.05, "replica_id": "only"}))
    srv.start()
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as api:
            store = LocalBlobStore(settings.resolved_blob_dir)
            version = register_model(api)
            backdate(store, version["sha256"], utcnow() - OLD)
            garbage = _old_blob(store, b"the losing body of a duplicate submission")
            wait_until(lambda: not store.path_of(garbage).exists(), what="the scheduled collection")
            assert store.path_of(version["sha256"]).is_file()
    finally:
        srv.stop()


async def test_one_replica_collects_per_interval(settings: Settings) -> None:
    contexts = [build_context(settings.model_copy(update={"replica_id": f"r{i}"})) for i in range(2)]
    try:
        first, second = (BlobCollector(c) for c in contexts)
        assert await first.run_once() is not None
        assert await second.run_once() is None  # the lease is held for the whole interval
        assert await first.run_once() is not None  # and renewed by its holder
        assert await contexts[0].state.lease_holder("blob-gc") == "r0"
    finally:
        for c in contexts:
            await c.close()
