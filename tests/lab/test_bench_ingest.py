"""Smoke test of `fedface bench ingest`: a tiny embedded run end to end
(coordinator and echo server as real subprocesses)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedface_cli.main import app
from fedface_lab.bench_ingest import model_shapes

REQUIRED = {
    "devices", "params", "concurrency", "updates_per_s", "mb_per_s", "p50_ms", "p99_ms", "server_peak_rss_mb",
    "server_peak_rss_intake_mb", "server_peak_rss_aggregation_mb", "aggregate_s", "echo_updates_per_s",
    "ratio_to_echo", "backend", "cpu_count", "machine", "timestamp",
}


def test_model_shapes_sum_to_params() -> None:
    for params in (1, 255, 1000, 1_000_000, 1_234_567):
        shapes = model_shapes(params)
        assert sum(math.prod(s) for s in shapes.values()) == params


def test_bench_ingest_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Embedded whatever the caller's environment says: the smoke test needs no Postgres or Redis.
    monkeypatch.delenv("FEDFACE_DATABASE_URL", raising=False)
    monkeypatch.delenv("FEDFACE_REDIS_URL", raising=False)
    out = tmp_path / "ingest.json"
    result = CliRunner().invoke(app, ["bench", "ingest", "--devices", "3", "--params", "1000", "--concurrency", "2",
                                      "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert not REQUIRED - set(data), REQUIRED - set(data)
    assert (data["devices"], data["params"], data["concurrency"], data["backend"]) == (3, 1000, 2, "embedded")
    assert data["accepted"] == 3 and data["errors"] == []
    assert data["round_state"] == "committed" and data["round_accepted"] == 3 and data["round_rejected"] == 0
    assert data["updates_per_s"] > 0 and data["echo_updates_per_s"] > 0 and data["ratio_to_echo"] > 0
    before, after = data["echo_runs_updates_per_s"]
    assert data["echo_updates_per_s"] == round((before + after) / 2, 2)
    assert data["server_peak_rss_mb"] >= data["server_peak_rss_intake_mb"] > 0
    assert isinstance(data["aggregate_s"], float) and data["cpu_count"] >= 1
