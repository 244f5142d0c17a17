"""The micro-benchmark runs end to end at a toy size and reports every figure (its timings are not checked)."""

from __future__ import annotations

from coordinator.secagg.bench import bench_secagg


def test_bench_reports_every_figure() -> None:
    report = bench_secagg(params=1000, devices=12, neighbours=6, dropout=0.2, repeats=1)
    assert report["params"] == 1000 and report["neighbours"] == 6 and report["threshold"] == 4
    assert report["dropped"] == 2
    assert report["server_prg_expansions"] >= 10
    for key, value in report.items():
        if key.endswith("_s"):
            assert value >= 0, key
