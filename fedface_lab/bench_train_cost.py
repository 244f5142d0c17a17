"""What one local training step costs a device, per photo, for each choice of what it trains.

Forward only (what evaluation and the class-embedding init cost), and forward + backward +
SGD step with everything trained or only the parameters that the `frozen` prefixes leave,
on one CPU thread (a phone core) unless told otherwise. Medians of repeated batches after a
warm-up; compared within one run, so the ratios hold on a noisy machine."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch

from device_agent.algorithms import pick_device, trainable_parameters
from fedface_common.face.checkpoint import load_model
from fedface_lab.machine import float_kernels, machine_info


def _median_seconds(step: Any, repeats: int) -> float:
    step()  # warm-up: the first call sets up the kernels
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_cost(model_path: Path, choices: dict[str, list[str]], batch: int = 16, repeats: int = 5,
               threads: int = 1, device: str = "cpu") -> dict[str, Any]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    target = pick_device(device)
    model, manifest = load_model(model_path, str(target))
    x = torch.randn(batch, 3, manifest.input_size, manifest.input_size, device=target)

    def sync() -> None:
        if target.type == "cuda":
            torch.cuda.synchronize()

    def forward() -> None:
        with torch.no_grad():
            model(x)
        sync()

    rows: dict[str, Any] = {"forward_only": {"s_per_photo": _median_seconds(forward, repeats) / batch}}
    for name, frozen in choices.items():
        params = trainable_parameters(model, frozen)
        optimizer = torch.optim.SGD(params, lr=1e-6, momentum=0.9)
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)

        def step(optimizer: torch.optim.Optimizer = optimizer) -> None:
            optimizer.zero_grad(set_to_none=True)
            model(x).sum().backward()
            optimizer.step()
            sync()

        model.train()
        rows[name] = {"frozen": frozen, "trained_parameters": sum(p.numel() for p in params),
                      "s_per_photo": _median_seconds(step, repeats) / batch}
        for p in model.parameters():
            p.requires_grad_(True)
    forward_s = rows["forward_only"]["s_per_photo"]
    for row in rows.values():
        row["ratio_to_forward"] = row["s_per_photo"] / forward_s
    return {"model": str(model_path), "architecture": manifest.architecture, "batch": batch, "threads": threads,
            "device": str(target), "parameters": sum(p.numel() for p in model.parameters()), "rows": rows,
            "machine": {**machine_info(), **float_kernels()}}
