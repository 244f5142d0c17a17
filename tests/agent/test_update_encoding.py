"""The agent sends its update in the round's encoding: F16 or I8 plus a scale per backbone delta, about half
or a quarter of the float32 bytes, the class embedding always F32 (against a scripted server)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from device_agent import algorithms
from device_agent.client import DeviceClient
from device_agent.photos.pipeline import FolderReport, ReportEntry
from device_agent.runner import Agent, Outcome, RoundReport
from device_agent.state import AgentState, Credential, sha256_hex
from fedface_common import tensors, update_codec
from fedface_common.face.manifest import ModelManifest
from fedface_common.wire import CLASS_EMBEDDING_TENSOR

from .fixtures import TINY, tiny_model_bytes

torch.set_num_threads(1)
MODEL = tiny_model_bytes()
NOW = datetime(2024, 1, 1, tzinfo=UTC)


class Photos:
    def __init__(self, n: int) -> None:
        self.crops = [Image.new("RGB", (TINY.input_size,) * 2, (i * 40, 90, 160)) for i in range(n)]
        self.report = FolderReport([ReportEntry(f"p{i}.jpg", True) for i in range(n)])

    def load(self, manifest: ModelManifest | None = None) -> tuple[list[Image.Image], FolderReport]:
        return self.crops, self.report


class ScriptedServer:
    """Hands out one fedface task in the given encoding, serves the model and keeps what is submitted."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params
        self.bodies: list[bytes] = []
        self.paths: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.paths.append(path)
        if path == "/v1/check-in":
            task = {"round_id": 3, "model_version": 1, "model_sha256": sha256_hex(MODEL),
                    "deadline": (NOW + timedelta(hours=1)).isoformat(), "has_class_embedding": False,
                    "training": {"algorithm": "fedface", "local_epochs": 2, "batch_size": 4, "learning_rate": 0.05,
                                 "params": self.params}}
            return httpx.Response(200, json={"status": "task", "task": task})
        if path == "/v1/models/1/weights":
            return httpx.Response(200, content=MODEL)
        if path == "/v1/rounds/3/update":
            self.bodies.append(request.content)
            body = {"update_id": len(self.bodies), "round_id": 3, "sha256": sha256_hex(request.content),
                    "status": "accepted"}
            return httpx.Response(200, content=json.dumps(body))
        return httpx.Response(404, json={"type": "x", "title": "no", "status": 404, "code": "not_found"})


def _round(tmp_path: Path, params: dict[str, Any]) -> tuple[RoundReport, ScriptedServer]:
    server = ScriptedServer(params)
    client = DeviceClient("http://coord", "ffd_cred", transport=httpx.MockTransport(server), sleeper=lambda s: None)
    state = AgentState(tmp_path / "state")
    state.save_credential(Credential("dev", "ffd_cred", "http://coord"))
    agent = Agent(client, state, Photos(6), seed=0, now=lambda: NOW, sleeper=lambda s: None)
    return agent.run_round(), server


@pytest.fixture(scope="module")
def float32_update(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, dict[str, np.ndarray]]:
    report, server = _round(tmp_path_factory.mktemp("f32"), {})
    assert report.status == Outcome.SUBMITTED, report
    (body,) = server.bodies
    return body, tensors.decode(body)


def _payload(body: bytes) -> int:
    """Bytes of tensor data, without the safetensors header."""
    return len(body) - 8 - tensors.header_length(body, len(body))


@pytest.mark.parametrize(("encoding", "dtype", "ratio"), [("float16", np.float16, 0.5), ("int8", np.int8, 0.25)])
def test_the_agent_sends_the_rounds_encoding(encoding: update_codec.Encoding, dtype: type, ratio: float, tmp_path: Path,
                                             float32_update: tuple[bytes, dict[str, np.ndarray]]) -> None:
    f32_body, exact = float32_update
    report, server = _round(tmp_path, {"update_encoding": encoding})
    assert report.status == Outcome.SUBMITTED, report
    (body,) = server.bodies
    sent = tensors.decode(body)
    backbone = [name for name in exact if update_codec.is_compressed(name)]
    kept = set(exact) - set(backbone)  # w_c and the embedding BN's statistics
    assert CLASS_EMBEDDING_TENSOR in kept and len(backbone) > 100
    assert all(sent[name].dtype == dtype for name in backbone)
    assert all(sent[name].dtype == np.float32 for name in kept)
    scales = sorted(name for name in sent if name.startswith(update_codec.SCALE_PREFIX))
    assert scales == (sorted(update_codec.scale_name(n) for n in backbone) if encoding == "int8" else [])
    # Tensor bytes: the encoding's share of float32's, plus the few tensors kept F32 and int8's scales. (The
    # tiny model's JSON header is a large part of its body; a real model's is well under 1 %.)
    assert ratio * 0.95 < _payload(body) / _payload(f32_body) < ratio * 1.1, (len(body), len(f32_body))
    assert len(body) < len(f32_body) * (ratio + 0.2)
    assert report.bytes_sent >= len(body)
    # Same seed, same photos: the same training, so the decoded deltas are the float32 ones within the error.
    spec = {name: tensors.TensorInfo("F32", a.shape) for name, a in exact.items()}
    decoded = update_codec.decode(sent, encoding, spec)
    for name in backbone:
        want, got = exact[name].astype(np.float64), decoded[name].astype(np.float64)
        if encoding == "int8":
            bound = float(sent[update_codec.scale_name(name)][0]) / 2 + np.abs(want) * 2.0**-22
        else:
            bound = np.abs(want) * 2.0**-11 + 2.0**-25
        assert (np.abs(got - want) <= bound).all(), name
    for name in kept:
        np.testing.assert_array_equal(decoded[name], exact[name])


def test_an_encoding_the_agent_does_not_know_drops_the_round_before_any_work(tmp_path: Path) -> None:
    report, server = _round(tmp_path, {"update_encoding": "int4"})
    assert report.status == Outcome.DROPPED and report.code == "unsupported_encoding"
    assert server.paths == ["/v1/check-in"] and server.bodies == []


def test_a_delta_beyond_the_encodings_range_is_dropped_not_sent(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    train = algorithms.train_local

    def diverged(*args: Any, **kwargs: Any) -> algorithms.LocalResult:
        result = train(*args, **kwargs)
        name = next(iter(result.delta))
        result.delta[name] = np.full_like(result.delta[name], 1e6)
        return result

    monkeypatch.setattr(algorithms, "train_local", diverged)
    report, server = _round(tmp_path, {"update_encoding": "float16"})
    assert report.status == Outcome.DROPPED and report.code == "update_not_encodable", report
    assert server.bodies == [] and AgentState(tmp_path / "state").pending() is None
