"""Scripted devices and admin calls for API tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from fedface_common.tensors import encode
from fedface_common.wire import (
    CLASS_EMBEDDING_TENSOR,
    HEADER_BASE_VERSION,
    HEADER_CLIENT_METRICS,
    HEADER_NUM_SAMPLES,
    MANIFEST_METADATA_KEY,
)
from tests.conftest import ADMIN_TOKEN

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
EMBEDDING_DIM = 4


def tiny_model(seed: int = 0, embedding_dim: int | None = EMBEDDING_DIM) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "layer.weight": rng.standard_normal((3, 5)).astype(np.float32),
        "layer.bias": rng.standard_normal(3).astype(np.float32),
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),
    }


def model_bytes(tensors: dict[str, np.ndarray], embedding_dim: int | None = EMBEDDING_DIM,
                extra_manifest: dict[str, Any] | None = None) -> bytes:
    manifest: dict[str, Any] = {"architecture": "test-dense", **(extra_manifest or {})}
    if embedding_dim:
        manifest["embedding_dim"] = embedding_dim
    return encode(tensors, {MANIFEST_METADATA_KEY: json.dumps(manifest)})


def register_model(api: httpx.Client, tensors: dict[str, np.ndarray] | None = None,
                   embedding_dim: int | None = EMBEDDING_DIM, serve: bool = True,
                   admin: dict[str, str] = ADMIN, extra_manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    body = model_bytes(tensors if tensors is not None else tiny_model(), embedding_dim, extra_manifest)
    r = api.post("/v1/admin/models", content=body, headers=admin, params={"serve": serve})
    assert r.status_code == 201, r.text
    return dict(r.json())


def start_round(api: httpx.Client, admin: dict[str, str] = ADMIN, **config: Any) -> dict[str, Any]:
    body = {"algorithm": "fedavg", "target_devices": 2, "min_devices": 1, "deadline_s": 60, **config}
    r = api.post("/v1/admin/rounds", json=body, headers=admin)
    assert r.status_code == 201, r.text
    return dict(r.json())


def get_round(api: httpx.Client, round_id: int, admin: dict[str, str] = ADMIN) -> dict[str, Any]:
    r = api.get(f"/v1/admin/rounds/{round_id}", headers=admin)
    assert r.status_code == 200, r.text
    return dict(r.json())


def issue_token(api: httpx.Client, max_uses: int = 10, ttl_s: float = 3600, admin: dict[str, str] = ADMIN) -> str:
    r = api.post("/v1/admin/enrollment-tokens", json={"max_uses": max_uses, "ttl_s": ttl_s}, headers=admin)
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


@dataclass
class Device:
    api: httpx.Client
    device_id: str
    credential: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.credential}"}

    def check_in(self) -> dict[str, Any]:
        r = self.api.post("/v1/check-in", headers=self.auth)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def submit(self, round_id: int, body: bytes, num_samples: int = 1, base_version: int | str | None = None,
               metrics: dict[str, Any] | None = None, extra_headers: dict[str, str] | None = None) -> httpx.Response:
        headers = {**self.auth, HEADER_NUM_SAMPLES: str(num_samples)}
        if base_version is not None:
            headers[HEADER_BASE_VERSION] = str(base_version)
        if metrics is not None:
            headers[HEADER_CLIENT_METRICS] = json.dumps(metrics)
        headers.update(extra_headers or {})
        return self.api.post(f"/v1/rounds/{round_id}/update", content=body, headers=headers)


def enroll(api: httpx.Client, n: int, token: str | None = None, admin: dict[str, str] = ADMIN) -> list[Device]:
    token = token or issue_token(api, max_uses=n, admin=admin)
    devices = []
    for i in range(n):
        r = api.post("/v1/enroll", json={"token": token, "label": f"dev-{i}"})
        assert r.status_code == 201, r.text
        devices.append(Device(api, r.json()["device_id"], r.json()["credential"]))
    return devices


def delta(seed: int, embedding: bool = True, scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {
        "layer.weight": (rng.standard_normal((3, 5)) * scale).astype(np.float32),
        "layer.bias": (rng.standard_normal(3) * scale).astype(np.float32),
    }
    if embedding:
        out[CLASS_EMBEDDING_TENSOR] = rng.standard_normal(EMBEDDING_DIM).astype(np.float32)
    return out


def delta_bytes(seed: int, embedding: bool = True) -> bytes:
    return encode(delta(seed, embedding))
