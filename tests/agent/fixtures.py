"""Helpers for the agent tests: a tiny model, LFW identities, and a live
coordinator (`fedface serve` in embedded mode: SQLite + in-process Redis
stand-in, so neither Postgres nor Redis is needed)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def poll(check: Any, timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    """check() until it returns something truthy, within timeout_s (a bounded wait, not a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"{what}: not within {timeout_s} s")


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

        result: dict[str, Any] = poll(done, timeout_s, f"round {round_id} to finish", 0.1)
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
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDFACE_")}
    # Fast ticks and short idle waits keep the rounds quick; the check-in rate limit is
    # lifted because the test agents check in far more often than phones would.
    env.update(FEDFACE_ADMIN_TOKEN=ADMIN_TOKEN, FEDFACE_DATA_DIR=str(data_dir), FEDFACE_TICK_INTERVAL_S="0.1",
               FEDFACE_IDLE_RETRY_S="1", FEDFACE_CHECKIN_RATE_PER_MIN="100000", FEDFACE_LOG_LEVEL="WARNING")
    log = data_dir / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "fedface_cli.main", "serve", "--port", str(port)],
                                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    admin = httpx.Client(base_url=url, timeout=30.0, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"coordinator exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                return admin.get("/readyz").status_code == 200
            except httpx.TransportError:
                return False  # not listening yet

        try:
            poll(ready, 60.0, "coordinator readiness")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{log.read_text()[-4000:]}") from exc
        yield Coordinator(url, admin, log)
    finally:
        admin.close()
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
