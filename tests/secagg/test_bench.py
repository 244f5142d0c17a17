"""The micro-benchmark runs end to end at a toy size and reports every figure (its timings are not checked)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from coordinator.secagg.bench import bench_secagg
from fedface_cli.main import app


def test_bench_reports_every_figure() -> None:
    report = bench_secagg(params=1000, devices=12, neighbours=6, dropout=0.2, repeats=1)
    assert report["params"] == 1000 and report["neighbours"] == 6 and report["threshold"] == 4
    assert report["dropped"] == 2
    assert report["server_prg_expansions"] >= 10
    for key, value in report.items():
        if key.endswith("_s"):
            assert value >= 0, key


def test_the_cli_benchmark_reports_against_a_plain_round(tmp_path: Path) -> None:
    out = tmp_path / "secagg.json"
    result = CliRunner().invoke(app, ["bench", "secagg", "--devices", "8", "--params", "2000", "--dropout", "0.25",
                                      "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    for key in ("devices", "params", "dropout", "survivors", "client_extra_s_per_device", "server_extra_s",
                "plain_round_s", "ratio_to_plain", "bytes_extra_per_device", "max_abs_error", "error_bound"):
        assert key in report, key
    assert report["survivors"] == 6 and report["graph"] == "complete"
    assert 0 <= report["max_abs_error"] <= report["error_bound"]
