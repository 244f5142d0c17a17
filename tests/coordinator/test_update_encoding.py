"""Compact update encodings over real HTTP: an int8 or float16 round commits the float32 round's model
within the encoding's error, and every malformed encoded body is refused with its code, storing nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import create_engine, text

from fedface_common import update_codec
from fedface_common.tensors import decode, encode
from fedface_common.update_codec import MAX_SCALE, Encoding, scale_name
from fedface_common.wire import CLASS_EMBEDDING_TENSOR
from tests.support.fleet import ADMIN, Device, delta, enroll, get_round, register_model, start_round, tiny_model
from tests.support.live import LiveServer, wait_until

SAMPLES = [1, 2, 5]
BACKBONE = ("layer.weight", "layer.bias")


def _run_round(api: httpx.Client, devices: list[Device], base_version: int, encoding: Encoding) -> dict[str, Any]:
    rnd = start_round(api, target_devices=len(devices), min_devices=len(devices),
                      params={"update_encoding": encoding})
    for i, dev in enumerate(devices):
        task = dev.check_in()["task"]
        assert task["training"]["params"]["update_encoding"] == encoding
        body = encode(update_codec.encode(delta(i), encoding))
        r = dev.submit(rnd["id"], body, num_samples=SAMPLES[i], base_version=base_version)
        assert r.status_code == 200, r.text
    wait_until(lambda: get_round(api, rnd["id"])["state"] == "committed", what=f"{encoding} round commit")
    new_id = get_round(api, rnd["id"])["result_version_id"]
    return decode(api.get(f"/v1/admin/models/{new_id}/weights", headers=ADMIN).content)


def test_compact_rounds_commit_the_float32_model_within_the_encoding_error(api: httpx.Client) -> None:
    v1 = register_model(api, tiny_model())
    devices = enroll(api, len(SAMPLES))
    results: dict[str, dict[str, Any]] = {}
    for encoding in ("float32", "int8", "float16"):
        promoted = api.post(f"/v1/admin/models/{v1['id']}/promote", headers=ADMIN)  # every round from v1
        assert promoted.status_code == 200, promoted.text
        results[encoding] = _run_round(api, devices, v1["id"], encoding)

    weights = np.array(SAMPLES, dtype=np.float64) / sum(SAMPLES)
    for name in BACKBONE:
        exact = results["float32"][name].astype(np.float64)
        sent = [delta(i)[name].astype(np.float64) for i in range(len(SAMPLES))]
        # The weighted mean moves each element by at most the weighted mean of the devices' errors:
        # s_i / 2 for int8, float16's rounding of each value for float16 (plus float32 rounding).
        int8_bound = sum(w * np.abs(d).max() / 127 / 2 for w, d in zip(weights, sent, strict=True))
        f16_bound = sum(w * np.abs(d) * 2.0**-11 for w, d in zip(weights, sent, strict=True))
        slack = np.abs(exact) * 2.0**-22
        int8_error = np.abs(results["int8"][name] - exact)
        f16_error = np.abs(results["float16"][name] - exact)
        assert (int8_error <= int8_bound + slack).all(), (name, int8_error.max(), int8_bound)
        assert (f16_error <= f16_bound + slack).all(), name
        assert int8_error.max() > 0  # the int8 round really did travel as int8


@pytest.fixture
def int8_round(api: httpx.Client) -> dict[str, Any]:
    v1 = register_model(api)
    dev, other = enroll(api, 2)
    rnd = start_round(api, target_devices=2, min_devices=1, params={"update_encoding": "int8"})
    assert dev.check_in()["status"] == "task"
    return {"version": v1["id"], "round": rnd["id"], "dev": dev, "other": other}


def _int8(**changes: Any) -> bytes:
    """An honest int8 body of delta(1), with tensors replaced (None removes one)."""
    tensors = update_codec.encode(delta(1), "int8")
    for name, value in changes.items():
        if value is None:
            tensors.pop(name)
        else:
            tensors[name] = value
    return encode(tensors)


SCALE = scale_name("layer.weight")
BAD_INT8_BODIES = {
    "float32 body": (encode(delta(1)), "tensor_spec_mismatch"),
    "float16 body": (encode(update_codec.encode(delta(1), "float16")), "tensor_spec_mismatch"),
    "missing scale": (_int8(**{SCALE: None}), "tensor_spec_mismatch"),
    "scale of another tensor": (_int8(**{scale_name("nope"): np.ones(1, np.float32)}), "tensor_spec_mismatch"),
    "float64 scale": (_int8(**{SCALE: np.ones(1, np.float64)}), "tensor_spec_mismatch"),
    "scale per element": (_int8(**{SCALE: np.ones((3, 5), np.float32)}), "tensor_spec_mismatch"),
    "int8 class embedding": (_int8(**{CLASS_EMBEDDING_TENSOR: np.ones(4, np.int8)}), "tensor_spec_mismatch"),
    "float32 tensor among int8": (_int8(**{"layer.bias": np.ones(3, np.float32)}), "tensor_spec_mismatch"),
    "nan scale": (_int8(**{SCALE: np.array([np.nan], np.float32)}), "non_finite_values"),
    "inf scale": (_int8(**{SCALE: np.array([np.inf], np.float32)}), "non_finite_values"),
    "negative scale": (_int8(**{SCALE: np.array([-0.01], np.float32)}), "invalid_quantization"),
    "huge scale": (_int8(**{SCALE: np.array([MAX_SCALE * 4], np.float32)}), "invalid_quantization"),
    "q of -128": (_int8(**{"layer.bias": np.array([-128, 0, 3], np.int8)}), "invalid_quantization"),
}


def _stored_updates(database_url: str) -> int:
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        count = int(conn.execute(text("SELECT count(*) FROM updates")).scalar_one())
    engine.dispose()
    return count


def _blob_files(server: LiveServer) -> set[Path]:
    root = server.settings.resolved_blob_dir
    return {p for p in root.rglob("*") if p.is_file() and "tmp" not in p.parts}


def _refused(r: httpx.Response, code: str) -> None:
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == code, r.text


@pytest.mark.parametrize("case", sorted(BAD_INT8_BODIES))
def test_bad_int8_bodies_are_refused_and_store_nothing(case: str, int8_round: dict[str, Any], api: httpx.Client,
                                                       server: LiveServer, database_url: str) -> None:
    body, code = BAD_INT8_BODIES[case]
    before = _blob_files(server)
    _refused(int8_round["dev"].submit(int8_round["round"], body, base_version=int8_round["version"]), code)
    assert _stored_updates(database_url) == 0 and _blob_files(server) == before
    rnd = get_round(api, int8_round["round"])
    assert rnd["accepted"] == 0 and rnd["rejected"] == 1
    # The honest int8 body of the same device is accepted afterwards.
    ok = int8_round["dev"].submit(int8_round["round"], _int8(), base_version=int8_round["version"])
    assert ok.status_code == 200, ok.text
    assert _stored_updates(database_url) == 1


def test_encoded_bodies_in_a_round_of_another_encoding_are_refused(api: httpx.Client, server: LiveServer,
                                                                   database_url: str) -> None:
    v1 = register_model(api)
    (dev,) = enroll(api, 1)
    f32 = start_round(api, target_devices=1, min_devices=1)
    assert dev.check_in()["task"]["training"]["params"]["update_encoding"] == "float32"
    before = _blob_files(server)
    for encoding in ("int8", "float16"):
        body = encode(update_codec.encode(delta(1), encoding))
        _refused(dev.submit(f32["id"], body, base_version=v1["id"]), "tensor_spec_mismatch")
    assert api.post(f"/v1/admin/rounds/{f32['id']}/cancel", headers=ADMIN).status_code == 200

    f16 = start_round(api, target_devices=1, min_devices=1, params={"update_encoding": "float16"})
    dev.check_in()
    overflow = update_codec.encode(delta(1), "float16")
    overflow["layer.bias"] = np.array([1.0, np.inf, 0.0], np.float16)  # what casting 1e5 to float16 gives
    _refused(dev.submit(f16["id"], encode(overflow), base_version=v1["id"]), "non_finite_values")
    _refused(dev.submit(f16["id"], encode(delta(1)), base_version=v1["id"]), "tensor_spec_mismatch")
    assert _stored_updates(database_url) == 0 and _blob_files(server) == before


def test_an_unknown_encoding_is_an_invalid_config(api: httpx.Client) -> None:
    register_model(api)
    for params in ({"update_encoding": "int4"}, {"update_encoding": 8}):
        r = api.post("/v1/admin/rounds", json={"algorithm": "fedface", "params": params}, headers=ADMIN)
        assert r.status_code == 422 and r.json()["code"] == "invalid_config", r.text
    assert api.get("/v1/admin/rounds", headers=ADMIN).json() == []
