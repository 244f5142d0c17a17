"""A real coordinator process (`fedface serve`) for tests of the command-line
tools: embedded mode (SQLite + in-process Redis stand-in) in a temp dir, so it
needs neither Postgres nor Redis."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from fedface_common.tensors import encode
from fedface_common.wire import MANIFEST_METADATA_KEY

ADMIN_TOKEN = "cli-test-admin-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class ServedCoordinator:
    url: str
    token: str
    data_dir: Path
    log: Path


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 60.0) -> None:
    """Poll /readyz until it answers 200; fail early if the process died."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=url, timeout=2.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"coordinator exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                if client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.05)
    raise TimeoutError(f"coordinator at {url} not ready after {timeout_s}s:\n{log.read_text()[-4000:]}")


@contextmanager
def serve_coordinator(data_dir: Path, **env_overrides: str) -> Iterator[ServedCoordinator]:
    """`fedface serve` as a subprocess on a free port, stopped on exit."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDFACE_")}
    env.update(FEDFACE_ADMIN_TOKEN=ADMIN_TOKEN, FEDFACE_DATA_DIR=str(data_dir), FEDFACE_TICK_INTERVAL_S="0.1",
               FEDFACE_LOG_LEVEL="WARNING", **env_overrides)
    log = data_dir / "server.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "fedface_cli.main", "serve", "--port", str(port)],
                                env=env, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log)
        yield ServedCoordinator(url, ADMIN_TOKEN, data_dir, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def tiny_model_bytes(architecture: str = "tiny-dense") -> bytes:
    """A two-tensor model file whose manifest has no embedding_dim (plain FedAvg)."""
    tensors = {"dense.weight": np.zeros((4, 3), np.float32), "dense.bias": np.zeros(3, np.float32)}
    return encode(tensors, {MANIFEST_METADATA_KEY: json.dumps({"architecture": architecture})})
