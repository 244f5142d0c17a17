"""The machine record the benchmarks write (the FedFace bench's results depend on the CPU's kernels),
built from controlled inputs: a given /proc/cpuinfo, psutil's and torch's answers."""

from __future__ import annotations

import platform
from pathlib import Path
from types import SimpleNamespace

import pytest

from fedface_lab import machine


def _cpuinfo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str | None) -> None:
    """/proc/cpuinfo reads as `text` (unreadable when None)."""
    cpuinfo = tmp_path / "cpuinfo"
    if text is not None:
        cpuinfo.write_text(text)
    real_path = machine.Path
    monkeypatch.setattr(machine, "Path", lambda p: cpuinfo if p == "/proc/cpuinfo" else real_path(p))


def test_cpu_model_reads_the_model_name_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _cpuinfo(monkeypatch, tmp_path, "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Example CPU @ 2.00GHz\n"
                                    "processor\t: 1\nmodel name\t: Example CPU @ 2.00GHz\n")
    assert machine.cpu_model() == "Example CPU @ 2.00GHz"


@pytest.mark.parametrize("cpuinfo", ["processor\t: 0\nHardware\t: an ARM board\n", None],
                         ids=["no model name line", "unreadable"])
def test_cpu_model_falls_back_to_platform(cpuinfo: str | None, monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    _cpuinfo(monkeypatch, tmp_path, cpuinfo)
    monkeypatch.setattr(platform, "processor", lambda: "aarch64")
    assert machine.cpu_model() == "aarch64"
    monkeypatch.setattr(platform, "processor", lambda: "")
    assert machine.cpu_model() == "unknown"


def test_machine_info_records_counts_memory_and_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(machine.psutil, "cpu_count", lambda logical=True: 8 if logical else 4)
    monkeypatch.setattr(machine.psutil, "virtual_memory", lambda: SimpleNamespace(total=int(15.96 * 2**30)))
    monkeypatch.setattr(machine.psutil, "getloadavg", lambda: (1.234, 0.5, 0.25))
    monkeypatch.setattr(machine, "cpu_model", lambda: "Example CPU")
    info = machine.machine_info()
    assert {k: info[k] for k in ("cpu_count", "cpu_count_physical", "cpu_model", "memory_gib", "load_avg_1m")} == {
        "cpu_count": 8, "cpu_count_physical": 4, "cpu_model": "Example CPU", "memory_gib": 16.0,
        "load_avg_1m": 1.23}
    assert info["python"] == platform.python_version() and info["platform"] == platform.platform()


def test_float_kernels_name_torchs_version_and_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch, "__version__", "2.99.0+cpu")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert machine.float_kernels() == {"torch": "2.99.0+cpu", "torch_cpu_capability": "AVX512"}
