"""The blob store's disk fills up mid-round. A submission that cannot be
stored is answered 503 (a problem document naming the blob store, with
Retry-After), nothing half-written stays behind or is referenced, and once
space is freed the same submission succeeds and the round commits."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, text

from coordinator.settings import Settings
from fedface_common.tensors import decode
from tests.support.faults import EXACT_MEAN, AnswerLog, assert_unavailable
from tests.support.fleet import ADMIN, delta, delta_bytes, enroll, get_round, register_model, start_round, tiny_model
from tests.support.live import LiveServer, wait_until

pytestmark = pytest.mark.faults


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a file system the test can fill without touching the machine's own disks."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=False)


def _fill(disk: Path) -> Path:
    """Write one file until the file system refuses another byte."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


def _referenced_blobs(database_url: str, round_id: int) -> list[str]:
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT blob_sha256 FROM updates WHERE round_id = :r"), {"r": round_id}).all()
    engine.dispose()
    return [r[0] for r in rows]


def test_full_blob_disk_refuses_with_503_then_recovers(
    settings: Settings, database_url: str, small_disk: Path, answers: AnswerLog
) -> None:
    blob_dir = small_disk / "blobs"
    srv = LiveServer(settings.model_copy(update={"blob_dir": blob_dir, "outage_retry_after_s": 2}))
    srv.start()
    try:
        with answers.client(srv.url) as api:
            base = tiny_model()
            v1 = register_model(api, base)["id"]
            devices = enroll(api, 3)
            rnd = start_round(api, target_devices=3, min_devices=3, params=EXACT_MEAN)["id"]
            for d in devices:
                assert d.check_in()["status"] == "task"
            assert devices[0].submit(rnd, delta_bytes(0), num_samples=1, base_version=v1).status_code == 200

            filler = _fill(small_disk)
            body = assert_unavailable(devices[1].submit(rnd, delta_bytes(1), num_samples=2, base_version=v1),
                                      "blob_store")
            assert "space" in body["detail"]
            assert get_round(api, rnd)["accepted"] == 1
            # Nothing half-written is left in the staging area, and every update the database
            # references is whole in the store.
            assert list((blob_dir / "tmp").iterdir()) == []
            for sha in _referenced_blobs(database_url, rnd):
                stored = blob_dir / sha[:2] / sha[2:]
                assert hashlib.sha256(stored.read_bytes()).hexdigest() == sha

            filler.unlink()
            assert devices[1].submit(rnd, delta_bytes(1), num_samples=2, base_version=v1).status_code == 200
            assert devices[2].submit(rnd, delta_bytes(2), num_samples=3, base_version=v1).status_code == 200
            wait_until(lambda: get_round(api, rnd)["state"] == "committed", what="commit after space is freed")
            done = get_round(api, rnd)
            assert done["accepted"] == 3
            got = decode(api.get(f"/v1/admin/models/{done['result_version_id']}/weights", headers=ADMIN).content)
    finally:
        srv.stop()
    weights = np.array([1, 2, 3]) / 6
    expected = base["layer.weight"] + sum(w * delta(i)["layer.weight"] for i, w in enumerate(weights))
    np.testing.assert_allclose(got["layer.weight"], expected, rtol=1e-5, atol=1e-6)
    assert answers.server_errors() == []
