"""A real coordinator process (`fedface serve`) for tests of the command-line
tools: embedded mode (SQLite + in-process Redis stand-in) in a temp dir, so it
needs neither Postgres nor Redis."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedface_common.tensors import encode
from fedface_common.wire import MANIFEST_METADATA_KEY
from tests.support.proc import embedded_coordinator

ADMIN_TOKEN = "cli-test-admin-token-0123456789"


@dataclass(frozen=True)
class ServedCoordinator:
    url: str
    token: str
    data_dir: Path
    log: Path


@contextmanager
def serve_coordinator(data_dir: Path, **env_overrides: str) -> Iterator[ServedCoordinator]:
    """`fedface serve` as a subprocess on a free port, stopped on exit."""
    with embedded_coordinator(data_dir, ADMIN_TOKEN, **env_overrides) as proc:
        yield ServedCoordinator(proc.url, ADMIN_TOKEN, data_dir, proc.log_path)


def tiny_model_bytes(architecture: str = "tiny-dense") -> bytes:
    """A two-tensor model file whose manifest has no embedding_dim (plain FedAvg)."""
    tensors = {"dense.weight": np.zeros((4, 3), np.float32), "dense.bias": np.zeros(3, np.float32)}
    return encode(tensors, {MANIFEST_METADATA_KEY: json.dumps({"architecture": architecture})})
