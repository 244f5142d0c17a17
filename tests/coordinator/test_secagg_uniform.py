"""What the server stores of one device in a secure round is indistinguishable from uniform: the masked
update read back from the blob store passes the byte-frequency and bit-balance tests of tests/secagg (which
flag the unmasked input), and the round still commits the mean."""

from __future__ import annotations

import httpx
import numpy as np
from sqlalchemy import create_engine, text

from coordinator.settings import Settings
from fedface_common.secagg import fixedpoint
from fedface_common.secagg.messages import MASKED_INPUT_TENSOR
from fedface_common.secagg.task import flatten, layout_of
from fedface_common.tensors import decode
from storage.blobs.local import LocalBlobStore
from tests.secagg.test_uniformity import _looks_uniform
from tests.support.fleet import enroll, register_model, start_round
from tests.support.secure import SecureDevice, run_secure_round, secure_params

SHAPE = (512, 1024)  # 2^19 coordinates: 2 MiB of masked input, under the test server's 4 MiB limit


def test_a_stored_masked_update_looks_uniform(api: httpx.Client, settings: Settings) -> None:
    register_model(api, {"layer.weight": np.zeros(SHAPE, dtype=np.float32)}, embedding_dim=None)
    rng = np.random.default_rng(0)
    updates = [{"layer.weight": (rng.normal(size=SHAPE) * 1e-3).astype(np.float32)} for _ in range(3)]
    devices = [SecureDevice(d, u) for d, u in zip(enroll(api, 3), updates, strict=True)]
    rnd = start_round(api, algorithm="fedavg-plain", target_devices=3, min_devices=3, params=secure_params())
    done = run_secure_round(api, int(rnd["id"]), devices)
    assert done["state"] == "committed", done["failure_reason"]

    engine = create_engine(settings.database_url.replace("postgresql://", "postgresql+psycopg://"))  # type: ignore[union-attr]
    with engine.connect() as conn:
        sha = conn.execute(text("SELECT blob_sha256 FROM updates WHERE round_id = :r AND device_id = :d"),
                           {"r": rnd["id"], "d": devices[0].device.device_id}).scalar_one()
    engine.dispose()
    stored = decode(LocalBlobStore(settings.resolved_blob_dir).path_of(sha).read_bytes())[MASKED_INPUT_TENSOR]
    assert stored.dtype == np.uint32 and stored.shape == (SHAPE[0] * SHAPE[1],)
    assert _looks_uniform(stored)
    # The same statistics see the input the mask hides.
    scale = done["metrics"]["secagg"]["scale"]
    plain = fixedpoint.encode(flatten(updates[0], layout_of({"layer.weight": SHAPE})), 10.0, scale)
    assert not _looks_uniform(plain)
