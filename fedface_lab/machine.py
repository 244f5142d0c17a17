"""What a benchmark's JSON records about the machine it ran on.

Training results on CPU are reproducible on one host class but not across
classes whose floating-point kernels differ (AVX2 vs AVX-512), so the FedFace
bench also records the CPU model and the kernel set torch dispatched to."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import psutil


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else whatever `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    return {"cpu_count": os.cpu_count(), "cpu_count_physical": psutil.cpu_count(logical=False),
            "cpu_model": cpu_model(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(), "python": platform.python_version(),
            # The machine may be shared: the load around the run says how much to trust the figures.
            "load_avg_1m": round(psutil.getloadavg()[0], 2)}


def float_kernels() -> dict[str, str]:
    """torch's version and the CPU kernel set it dispatches to (e.g. AVX2, AVX512)."""
    import torch  # only the training benches need it; the server benches stay torch-free

    return {"torch": torch.__version__, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}
