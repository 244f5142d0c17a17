"""Blob collection while devices upload, over real HTTP, on the local and the S3 store.

An admin thread collects in a loop while devices submit from threads. Most
devices send bytes that already lie in the store, old and unreferenced (the
same update sent again), so the collector has them in its listing as garbage.
The first pass is held between reading the references and removing anything
until half of the devices are acknowledged: the worst interleaving, every
time. The other half upload while passes run freely. Every acknowledged
update's blob must still be there, and the round must aggregate."""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from coordinator.settings import Settings
from storage.blobs import BlobStore
from storage.blobs.factory import make_blob_store
from storage.db import utcnow
from tests.support.blob_age import backdate
from tests.support.fleet import ADMIN, delta_bytes, enroll, get_round, register_model, start_round
from tests.support.live import LiveServer, wait_until

DEVICES = 12
OLD = timedelta(hours=3)


@pytest.fixture(params=["local", "s3"])
def store_settings(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    if request.param == "local":
        return settings
    return settings.model_copy(update={
        "blob_backend": "s3", "s3_endpoint_url": request.getfixturevalue("s3_endpoint"),
        "s3_bucket": f"fedface-gc-{uuid.uuid4().hex[:12]}", "s3_access_key_id": SecretStr("testing"),
        "s3_secret_access_key": SecretStr("testing")})


@pytest.fixture
def server(store_settings: Settings) -> Iterator[LiveServer]:
    srv = LiveServer(store_settings)
    srv.start()
    yield srv
    srv.stop()


class Gate:
    """Holds the collector's first removal until opened (the pass has listed and read the references)."""

    def __init__(self) -> None:
        self.reached, self.opened = threading.Event(), threading.Event()

    def install(self, store: BlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
        remove = store.delete_if_older

        async def gated(sha256: str, before: datetime) -> bool:
            if not self.opened.is_set():
                self.reached.set()
                await asyncio.to_thread(self.opened.wait, 60)  # the server keeps serving uploads meanwhile
            return await remove(sha256, before)

        monkeypatch.setattr(store, "delete_if_older", gated)


class Collector(threading.Thread):
    """Calls the admin collection route back to back until stopped."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.stop = url, threading.Event()
        self.passes, self.removed, self.errors = 0, set[str](), list[str]()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self.stop.is_set():
                r = client.post("/v1/admin/blobs/gc", headers=ADMIN)
                if r.status_code != 200:
                    self.errors.append(r.text)
                    return
                self.removed |= {o["key"] for o in r.json()["blobs_removed"]}
                self.passes += 1


def test_acknowledged_updates_keep_their_blobs_while_the_collector_runs(
    server: LiveServer, store_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    store: BlobStore = make_blob_store(store_settings, tmp_dir=store_settings.data_dir / "test-staging")
    gate = Gate()
    gate.install(server.app.state.ctx.blobs, monkeypatch)

    def run(coro: Any) -> Any:
        return asyncio.run(coro)

    api = httpx.Client(base_url=server.url, timeout=60)
    v1 = register_model(api)
    devices = enroll(api, DEVICES)
    rnd = start_round(api, target_devices=DEVICES, min_devices=DEVICES, over_selection=1.0, deadline_s=300)
    assert all(d.check_in()["status"] == "task" for d in devices)
    bodies = [delta_bytes(100 + i) for i in range(DEVICES)]
    resent = [run(store.put_bytes(bodies[i])) for i in range(DEVICES) if i % 4 != 3]
    garbage = [run(store.put_bytes(os.urandom(4096))) for _ in range(20)]
    for key in resent + garbage:
        backdate(store, key, utcnow() - OLD)

    def submit(i: int) -> httpx.Response:
        return devices[i].submit(rnd["id"], bodies[i], base_version=v1["id"])

    collector = Collector(server.url)
    collector.start()
    try:
        wait_until(gate.reached.is_set, what="the first pass about to remove")
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(submit, range(DEVICES // 2)))
            gate.opened.set()
            answers += list(pool.map(submit, range(DEVICES // 2, DEVICES)))
        passes = collector.passes
        wait_until(lambda: collector.passes >= passes + 2 or bool(collector.errors),
                   what="collections after the uploads")
    finally:
        gate.opened.set()
        collector.stop.set()
        collector.join(timeout=60)
    assert not collector.errors, collector.errors

    assert [a.status_code for a in answers] == [200] * DEVICES, [a.text for a in answers]
    acknowledged = {a.json()["sha256"] for a in answers}
    missing = [sha for sha in acknowledged if not run(store.exists(sha))]
    assert missing == [], f"acknowledged updates lost their blobs: {missing}"
    assert set(garbage) <= collector.removed  # the old garbage went meanwhile
    wait_until(lambda: get_round(api, rnd["id"])["state"] in ("committed", "failed"), timeout=60,
               what="round end")
    done = get_round(api, rnd["id"])
    assert done["state"] == "committed", done["failure_reason"]
    assert done["accepted"] == DEVICES
    api.close()
