"""What secure aggregation costs next to a plain round of the same updates, in one run.

`coordinator.secagg.bench.bench_secagg` times one device's SecAgg+ stages and the server's unmasking. Here,
around it, the survivors' updates of P parameters are generated (norm about the clip, so some are clipped)
and both servers aggregate them in this process, without HTTP or storage (the same for both, so left out):

* plain: decode each float32 safetensors body and fold it into a float64 sum (the round engine's fold),
  then take the mean;
* secure: decode each uint32 body and add it mod 2^32 (`protocol.accumulate`), then unmask (the
  benchmark's reconstruct + remove-masks time) and decode from fixed point.

`max_abs_error` is measured on these updates: the decoded fixed-point mean against the float64 mean of the
clipped updates, per coordinate; `error_bound` is the fixed-point bound on it (0.5 / scale).

Times are CPU seconds of this process (the machine may be shared; everything here runs on one core)."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from coordinator.secagg import protocol
from coordinator.secagg.bench import bench_secagg
from coordinator.secagg.params import neighbours_and_threshold
from fedface_common.secagg import fixedpoint
from fedface_common.tensors import decode, encode

CLIP_NORM = 1.0  # bench_secagg's clip; updates are drawn with norms around it
Tick = Callable[[str], None]


def _machine() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        model = ""
    import os

    return f"{model or platform.processor()} ({os.cpu_count()} cores)"


def _aggregate_both(inputs: int, params: int, scale: float, seed: int, tick: Tick) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    plain_s = secure_s = 0.0
    fsum = np.zeros(params, dtype=np.float64)  # the plain server's sum
    clipped_sum = np.zeros(params, dtype=np.float64)  # the exact sum of clipped updates, for the error
    total: np.ndarray | None = None
    for _ in range(inputs):
        update = (rng.normal(size=params) * (rng.uniform(0.5, 1.5) * CLIP_NORM / np.sqrt(params))).astype(np.float32)
        plain_body = encode({"w": update})
        x = fixedpoint.encode(update, CLIP_NORM, scale)
        clipped_sum += fixedpoint.clip_to_norm(update, CLIP_NORM)
        # The masked input costs the server what any uint32 vector does: x stands in for it.
        secure_body = encode({"m": x})
        start = time.process_time()
        fsum += decode(plain_body)["w"].astype(np.float64)
        plain_s += time.process_time() - start
        start = time.process_time()
        total = protocol.accumulate(total, decode(secure_body)["m"])
        secure_s += time.process_time() - start
        tick("aggregate")
    assert total is not None
    start = time.process_time()
    _ = fsum / inputs
    plain_s += time.process_time() - start
    start = time.process_time()
    mean = fixedpoint.decode(total, scale) / inputs
    secure_s += time.process_time() - start
    error = float(np.max(np.abs(mean - clipped_sum / inputs)))
    return {"plain_round_s": plain_s, "secure_sum_s": secure_s, "max_abs_error": error}


def run_bench(devices: int, params: int, dropout: float, repeats: int, seed: int, tick: Tick) -> dict[str, Any]:
    k, _, rule = neighbours_and_threshold(devices, dropout)
    protocol_report = bench_secagg(params=params, devices=devices, neighbours=k if rule == "complete" else None,
                                   dropout=dropout, repeats=repeats, seed=seed)
    tick("protocol")
    r = protocol_report
    survivors = devices - int(r["dropped"])
    scale = fixedpoint.choose_scale(devices, CLIP_NORM)  # fixed for the selected devices, before any drop
    both = _aggregate_both(survivors, params, scale, seed, tick)
    client_extra = sum(float(r[f"client_{s}_cpu_s"]) for s in ("encode", "advertise", "share_keys", "mask", "unmask"))
    secure_server = both["secure_sum_s"] + float(r["server_unmask_cpu_s"])
    return {
        "devices": devices,
        "params": params,
        "dropout": dropout,
        "survivors": survivors,
        "neighbours": r["neighbours"],
        "threshold": r["threshold"],
        "graph": rule,
        "client_extra_s_per_device": client_extra,
        "server_extra_s": secure_server - both["plain_round_s"],
        "server_unmask_s": float(r["server_unmask_cpu_s"]),
        "secure_round_server_s": secure_server,
        "plain_round_s": both["plain_round_s"],
        "ratio_to_plain": secure_server / both["plain_round_s"],
        "bytes_extra_per_device": int(r["advertise_bytes"]) + int(r["share_keys_bytes"]) + int(r["forwarded_bytes"])
        + int(r["unmask_bytes"]),
        "max_abs_error": both["max_abs_error"],
        "error_bound": fixedpoint.max_abs_error(survivors, scale) / survivors,
        "scale": scale,
        "clip_norm": CLIP_NORM,
        "repeats": repeats,
        "machine": _machine(),
        "protocol": protocol_report,
    }
