"""Smoke test of `fedface bench fleet`: 6 devices, 1 then 2 real coordinator
subprocesses on a shared Postgres + Redis, 2 rounds, one replica SIGKILLed in
round 2 so that failover is exercised too."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedface_cli.main import app

DATABASE_URL = os.environ.get("FEDFACE_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("FEDFACE_REDIS_URL", "redis://127.0.0.1:6379/0")

TOP = {"benchmark", "devices", "params", "rounds", "concurrency", "results", "machine", "timestamp"}
PER_R = {
    "replicas", "backend", "checkins_per_s", "submissions_per_s", "downloads_per_s", "latency_ms", "errors",
    "failed_over_requests", "failed_on_killed_replica", "close_to_commit_s", "rounds_committed", "peak_rss_mb",
    "wall_s",
}


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


@pytest.mark.skipif(not (_reachable("127.0.0.1", 5432) and _reachable("127.0.0.1", 6379)),
                    reason="fleet benchmark needs Postgres on 127.0.0.1:5432 and Redis on 127.0.0.1:6379 "
                           "(several replicas cannot share embedded SQLite)")
def test_bench_fleet_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDFACE_DATABASE_URL", DATABASE_URL)
    monkeypatch.setenv("FEDFACE_REDIS_URL", REDIS_URL)
    out = tmp_path / "fleet.json"
    result = CliRunner().invoke(app, ["bench", "fleet", "--devices", "6", "--replicas", "1,2", "--rounds", "2",
                                      "--params", "1000", "--concurrency", "4", "--kill-round", "2",
                                      "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert not TOP - set(data), TOP - set(data)
    assert [r["replicas"] for r in data["results"]] == [1, 2]
    for r in data["results"]:
        assert not PER_R - set(r), PER_R - set(r)
        assert r["backend"] == "postgres+redis"
        assert r["errors"] == 0, r["error_samples"]
        assert r["rounds_committed"] == 2 and all(x["accepted"] == 6 for x in r["rounds"])
        assert len(r["close_to_commit_s"]) == 2 and all(s >= 0 for s in r["close_to_commit_s"])
        assert set(r["latency_ms"]) == {"check_in", "download", "submit"}
        assert r["submissions_per_s"] > 0 and len(r["peak_rss_mb"]) == r["replicas"]
    one, two = data["results"]
    assert one["killed_replica"] is None and one["failed_over_requests"] == 0
    assert two["killed_replica"] == 1
