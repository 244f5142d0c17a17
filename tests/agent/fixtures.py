"""Helpers for the agent tests: a tiny model, LFW identities, and a live
coordinator (`fedface serve` in embedded mode: SQLite + in-process Redis
stand-in, so neither Postgres nor Redis is needed)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

from fedface_common.face.checkpoint import encode_model
from fedface_common.face.manifest import ModelManifest
from tests.support.live import wait_until
from tests.support.proc import embedded_coordinator

REPO = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "agent-test-admin-token-0123456789"
TINY = ModelManifest(width=0.25, input_size=32, embedding_dim=64)


def tiny_model_bytes(seed: int = 0) -> bytes:
    torch.manual_seed(seed)
    return encode_model(TINY.build(), TINY)


def data_root() -> Path:
    return Path(os.environ.get("FEDFACE_DATA", REPO.parent / "shared" / "data"))


def identities(n: int, min_photos: int = 3) -> list[Path] | str:
    """The first n client identities with >= min_photos photos, or why there are none."""
    root = data_root()
    clients = root / "protocol" / "clients.txt"
    lfw = root / "lfw" / "lfw-deepfunneled"
    if not clients.is_file() or not lfw.is_dir():
        return f"face data not found at {root} (set FEDFACE_DATA)"
    out: list[Path] = []
    for line in clients.read_text().splitlines():
        name, _, count = line.partition("\t")
        folder = lfw / name
        if count.strip().isdigit() and int(count) >= min_photos and folder.is_dir():
            out.append(folder)
            if len(out) == n:
                return out
    return f"fewer than {n} identities with >= {min_photos} photos in {clients}"


@dataclass
class Coordinator:
    url: str
    admin: httpx.Client
    log: Path

    def register_model(self, data: bytes) -> dict[str, Any]:
        resp = self.admin.post("/v1/admin/models", content=data, params={"serve": "true"})
        resp.raise_for_status()
        return dict(resp.json())

    def token(self, max_uses: int) -> str:
        resp = self.admin.post("/v1/admin/enrollment-tokens", json={"max_uses": max_uses})
        resp.raise_for_status()
        return str(resp.json()["token"])

    def start_round(self, **config: Any) -> dict[str, Any]:
        resp = self.admin.post("/v1/admin/rounds", json=config)
        assert resp.status_code == 201, resp.text
        return dict(resp.json())

    def round(self, round_id: int) -> dict[str, Any]:
        resp = self.admin.get(f"/v1/admin/rounds/{round_id}")
        resp.raise_for_status()
        return dict(resp.json())

    def wait_round(self, round_id: int, timeout_s: float = 30.0) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            r = self.round(round_id)
            return r if r["state"] in ("committed", "failed", "cancelled") else None

        result = wait_until(done, timeout=timeout_s, interval=0.1, what=f"round {round_id} to finish")
        assert result is not None  # wait_until returns only a truthy value
        return result

    def models(self) -> list[dict[str, Any]]:
        resp = self.admin.get("/v1/admin/models")
        resp.raise_for_status()
        return list(resp.json())

    def attach_centres(self, version_id: int, centres: np.ndarray) -> None:
        from fedface_common.tensors import encode

        resp = self.admin.put(f"/v1/admin/models/{version_id}/class-centres",
                              content=encode({"class_centres": centres.astype(np.float32)}))
        assert resp.status_code == 200, resp.text


@contextmanager
def serve_coordinator(data_dir: Path) -> Iterator[Coordinator]:
    """`fedface serve` as a subprocess on a free port; stopped on exit."""
    # Short idle waits keep the rounds quick; the check-in rate limit is lifted because
    # the test agents check in far more often than phones would.
    with embedded_coordinator(data_dir, ADMIN_TOKEN, FEDFACE_IDLE_RETRY_S="1",
                              FEDFACE_CHECKIN_RATE_PER_MIN="100000") as proc, \
            httpx.Client(base_url=proc.url, timeout=30.0,
                         headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as admin:
        yield Coordinator(proc.url, admin, proc.log_path)
