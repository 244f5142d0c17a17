"""The machine record the benchmarks write: the FedFace bench's results depend on the CPU's kernels."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedface_lab import machine


def test_machine_info_names_the_cpu_and_its_size() -> None:
    info = machine.machine_info()
    assert info["cpu_count"] >= 1
    assert isinstance(info["cpu_model"], str) and info["cpu_model"]
    assert info["memory_gib"] > 0


def test_cpu_model_reads_the_model_name_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Example CPU @ 2.00GHz\n")
    real_path = machine.Path
    monkeypatch.setattr(machine, "Path", lambda p: cpuinfo if p == "/proc/cpuinfo" else real_path(p))
    assert machine.cpu_model() == "Example CPU @ 2.00GHz"


def test_float_kernels_name_torchs_dispatch() -> None:
    kernels = machine.float_kernels()
    assert kernels["torch"].startswith("2.")
    assert kernels["torch_cpu_capability"] in {"DEFAULT", "AVX2", "AVX512", "NO AVX", "ZVECTOR", "VSX", "SVE256"}
