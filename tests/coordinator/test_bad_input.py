"""Every bad input gets a clear problem response with a stable code and
changes nothing: no update row, no blob, no change in the round's counts."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from fedface_common.tensors import encode
from fedface_common.wire import CLASS_EMBEDDING_TENSOR, HEADER_BASE_VERSION, HEADER_NUM_SAMPLES
from tests.support.fleet import ADMIN, Device, delta, delta_bytes, enroll, get_round, register_model, start_round
from tests.support.live import LiveServer


@pytest.fixture
def setup(api: httpx.Client) -> dict[str, Any]:
    v1 = register_model(api)
    devices = enroll(api, 3)
    rnd = start_round(api, target_devices=2, min_devices=1, over_selection=1.0)
    assert devices[0].check_in()["status"] == "task"
    assert devices[1].check_in()["status"] == "task"
    return {"version": v1["id"], "round": rnd["id"], "dev": devices[0], "outsider": devices[2]}


def _blob_files(server: LiveServer) -> set[Path]:
    root = server.settings.resolved_blob_dir
    return {p for p in root.rglob("*") if p.is_file() and "tmp" not in p.parts}


def _with(**changes: Any) -> bytes:
    tensors = delta(1)
    for name, value in changes.items():
        if value is None:
            tensors.pop(name.replace("__", "."))
        else:
            tensors[name.replace("__", ".")] = value
    return encode(tensors)


NAN = np.array([1.0, np.nan, 0.0], dtype=np.float32)
INF = np.array([1.0, np.inf, 0.0], dtype=np.float32)

BAD_BODIES = {
    "not safetensors": (b"hello, I am not a tensor file at all", 422, "invalid_tensors"),
    "truncated header": (struct.pack("<Q", 10_000) + b"{}", 422, "invalid_tensors"),
    "header not json": (struct.pack("<Q", 4) + b"{{{{", 422, "invalid_tensors"),
    "missing tensor": (_with(layer__bias=None), 422, "tensor_spec_mismatch"),
    "extra tensor": (_with(extra=np.zeros(2, np.float32)), 422, "tensor_spec_mismatch"),
    "wrong shape": (_with(layer__bias=np.zeros(4, np.float32)), 422, "tensor_spec_mismatch"),
    "wrong dtype": (_with(layer__bias=np.zeros(3, np.float64)), 422, "tensor_spec_mismatch"),
    "wrong embedding dim": (_with(**{CLASS_EMBEDDING_TENSOR.replace(".", "__"): np.zeros(5, np.float32)}), 422,
                            "tensor_spec_mismatch"),
    "nan": (_with(layer__bias=NAN), 422, "non_finite_values"),
    "inf": (_with(layer__bias=INF), 422, "non_finite_values"),
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_bodies_are_refused_and_change_nothing(case: str, setup: dict[str, Any], api: httpx.Client,
                                                   server: LiveServer) -> None:
    body, status, code = BAD_BODIES[case]
    before = _blob_files(server)
    r = setup["dev"].submit(setup["round"], body, base_version=setup["version"])
    assert r.status_code == status, r.text
    problem = r.json()
    assert r.headers["content-type"].startswith("application/problem+json")
    assert problem["code"] == code and problem["status"] == status and problem["title"]
    assert _blob_files(server) == before
    rnd = get_round(api, setup["round"])
    assert rnd["accepted"] == 0 and rnd["rejected"] == 1
    # The device can still submit a good update afterwards.
    ok = setup["dev"].submit(setup["round"], delta_bytes(1), base_version=setup["version"])
    assert ok.status_code == 200, ok.text


BAD_HEADERS = {
    "negative samples": ({HEADER_NUM_SAMPLES: "-3"}, 422, "invalid_num_samples"),
    "zero samples": ({HEADER_NUM_SAMPLES: "0"}, 422, "invalid_num_samples"),
    "absurd samples": ({HEADER_NUM_SAMPLES: str(10**12)}, 422, "invalid_num_samples"),
    "non-numeric samples": ({HEADER_NUM_SAMPLES: "many"}, 422, "invalid_num_samples"),
    "stale base version": ({HEADER_BASE_VERSION: "999"}, 409, "stale_base_version"),
    "garbage base version": ({HEADER_BASE_VERSION: "v1"}, 422, "invalid_metadata"),
    "metrics not json": ({"X-FedFace-Client-Metrics": "{nope"}, 422, "invalid_metadata"),
    "metrics nested": ({"X-FedFace-Client-Metrics": json.dumps({"a": {"b": 1}})}, 422, "invalid_metadata"),
    "metrics too big": ({"X-FedFace-Client-Metrics": json.dumps({"k": "x" * 5000})}, 422, "invalid_metadata"),
}


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_bad_metadata_is_refused_and_changes_nothing(case: str, setup: dict[str, Any], api: httpx.Client,
                                                     server: LiveServer) -> None:
    headers, status, code = BAD_HEADERS[case]
    before = _blob_files(server)
    r = setup["dev"].submit(setup["round"], delta_bytes(1), base_version=setup["version"], extra_headers=headers)
    assert r.status_code == status and r.json()["code"] == code, r.text
    assert _blob_files(server) == before
    assert get_round(api, setup["round"])["accepted"] == 0


def test_body_over_limit_is_refused_by_content_length_and_while_streaming(
    setup: dict[str, Any], api: httpx.Client, server: LiveServer
) -> None:
    limit = server.settings.max_update_bytes
    before = _blob_files(server)
    big = b"\0" * (limit + 1)
    r = setup["dev"].submit(setup["round"], big, base_version=setup["version"])
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large"

    def chunks() -> Iterator[bytes]:  # chunked transfer: no Content-Length to trust
        for _ in range(limit // (1 << 20) + 2):
            yield b"\0" * (1 << 20)

    dev: Device = setup["dev"]
    r = api.post(f"/v1/rounds/{setup['round']}/update", content=chunks(),
                 headers={**dev.auth, HEADER_NUM_SAMPLES: "1", HEADER_BASE_VERSION: str(setup["version"])})
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large"
    assert _blob_files(server) == before
    staged = list((server.settings.resolved_blob_dir / "tmp").iterdir())
    assert staged == []
    assert get_round(api, setup["round"])["accepted"] == 0


def test_credentials_are_checked_on_every_call(setup: dict[str, Any], api: httpx.Client) -> None:
    dev: Device = setup["dev"]
    cases = [
        ({}, 401, "unauthorized"),
        ({"Authorization": "Bearer"}, 401, "unauthorized"),
        ({"Authorization": "Basic abc"}, 401, "unauthorized"),
        ({"Authorization": "Bearer ffd_nothex.secret"}, 401, "unauthorized"),
        ({"Authorization": dev.auth["Authorization"] + "x"}, 401, "unauthorized"),
        (ADMIN, 401, "unauthorized"),  # an admin token is not a device credential
    ]
    for headers, status, code in cases:
        r = api.post("/v1/check-in", headers=headers)
        assert (r.status_code, r.json()["code"]) == (status, code), (headers, r.text)
    # A device credential never opens the admin API.
    r = api.get("/v1/admin/rounds", headers=dev.auth)
    assert r.status_code == 401 and r.json()["code"] == "unauthorized"
    r = api.get("/v1/admin/rounds", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401


def test_revoked_device_is_refused_everywhere_and_its_row_of_w_is_deleted(setup: dict[str, Any],
                                                                          api: httpx.Client) -> None:
    dev: Device = setup["dev"]
    r = api.post(f"/v1/admin/devices/{dev.device_id}/revoke", headers=ADMIN)
    assert r.status_code == 200 and r.json()["revoked_at"]
    for call in (lambda: api.post("/v1/check-in", headers=dev.auth),
                 lambda: dev.submit(setup["round"], delta_bytes(1), base_version=setup["version"])):
        resp = call()
        assert resp.status_code == 403 and resp.json()["code"] == "credential_revoked"
    assert api.post("/v1/admin/devices/00000000-0000-0000-0000-000000000000/revoke",
                    headers=ADMIN).json()["code"] == "device_not_found"


def test_wrong_round_and_unknown_ids(setup: dict[str, Any], api: httpx.Client) -> None:
    outsider: Device = setup["outsider"]
    r = outsider.submit(setup["round"], delta_bytes(1), base_version=setup["version"])
    assert r.status_code == 403 and r.json()["code"] == "not_selected"
    # A round that does not exist gets the same answer: a device cannot probe which round ids exist.
    missing = setup["dev"].submit(4242, delta_bytes(1), base_version=setup["version"])
    assert (missing.status_code, missing.json()["code"]) == (r.status_code, r.json()["code"])
    assert missing.json()["detail"] == "device was not selected for round 4242"
    assert api.get("/v1/admin/models/4242", headers=ADMIN).json()["code"] == "model_not_found"
    assert api.get("/v1/admin/rounds/4242", headers=ADMIN).status_code == 404
    # Ids beyond the 32-bit columns are a validation error, not a driver crash (found by the API fuzz test).
    huge = api.get("/v1/admin/models/4442460317", headers=ADMIN)
    assert huge.status_code == 422 and huge.json()["code"] == "validation_error"
    assert setup["dev"].submit(2**40, delta_bytes(1), base_version=setup["version"]).status_code == 422
    assert get_round(api, setup["round"])["accepted"] == 0


def test_enrollment_tokens_single_use_expiry_and_bad_tokens(api: httpx.Client) -> None:
    r = api.post("/v1/admin/enrollment-tokens", json={"max_uses": 1}, headers=ADMIN)
    token = r.json()["token"]
    assert api.post("/v1/enroll", json={"token": token}).status_code == 201
    used = api.post("/v1/enroll", json={"token": token})
    assert used.status_code == 401 and used.json()["code"] == "invalid_enrollment_token"
    expired = api.post("/v1/admin/enrollment-tokens", json={"max_uses": 5, "ttl_s": 0.001}, headers=ADMIN).json()
    assert api.post("/v1/enroll", json={"token": expired["token"]}).json()["code"] == "invalid_enrollment_token"
    assert api.post("/v1/enroll", json={"token": "ffe_guessed-token"}).json()["code"] == "invalid_enrollment_token"
    bad = api.post("/v1/enroll", json={"token": "x"})
    assert bad.status_code == 422 and bad.json()["code"] == "validation_error"
    bad_cfg = api.post("/v1/admin/enrollment-tokens", json={"max_uses": 0}, headers=ADMIN)
    assert bad_cfg.status_code == 422
    devices = api.get("/v1/admin/devices", headers=ADMIN).json()
    assert len(devices) == 1


def test_bad_round_configs_and_models_are_refused(api: httpx.Client) -> None:
    r = api.post("/v1/admin/rounds", json={"algorithm": "fedavg"}, headers=ADMIN)
    assert r.status_code == 409 and r.json()["code"] == "no_served_model"
    register_model(api)
    for body, code in [
        ({"algorithm": "nope"}, "invalid_config"),
        ({"algorithm": "fedface", "params": {"tau": 7}}, "invalid_config"),
        ({"algorithm": "fedface", "params": {"unknown": 1}}, "invalid_config"),
        ({"min_devices": 5, "target_devices": 2}, "validation_error"),
        ({"deadline_s": -1}, "validation_error"),
        ({"algorithm": "fedface-private"}, "invalid_config"),  # no class centres attached
        # Valid parameters, but wider than the served model's embedding.
        ({"algorithm": "fedface", "params": {"embedding_lda_dims": 1024}}, "invalid_config"),
    ]:
        resp = api.post("/v1/admin/rounds", json=body, headers=ADMIN)
        assert resp.status_code == 422 and resp.json()["code"] == code, (body, resp.text)
    assert api.get("/v1/admin/rounds", headers=ADMIN).json() == []
    no_manifest = api.post("/v1/admin/models", content=encode({"w": np.zeros(2, np.float32)}), headers=ADMIN)
    assert no_manifest.status_code == 422 and no_manifest.json()["code"] == "invalid_metadata"
    assert len(api.get("/v1/admin/models", headers=ADMIN).json()) == 1
