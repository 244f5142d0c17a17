"""Micro-benchmark of SecAgg+: a device's extra time per stage, and the server's unmasking time.

Every figure is in seconds, the least over `repeats` runs (the least disturbed by other work on the
machine): `*_s` wall-clock, `*_cpu_s` this process's CPU time (everything here runs on one core, so on
an idle machine the two agree; on a shared one the CPU time is the figure to trust).

The round's key and share stages run for real over all devices; only one device masks a full-length
vector. The server's unmasking is timed on the real reconstructed secrets, graph and survivors, against
a uniformly random masked sum: its cost (one PRG expansion per survivor and one per (dropped, surviving
neighbour) pair, each followed by a vector add) does not depend on the values being unmasked."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from coordinator.secagg import protocol
from fedface_common.secagg import crypto, fixedpoint, graph
from fedface_common.secagg.device import SecAggDevice
from fedface_common.secagg.messages import UnmaskResponse

T = TypeVar("T")


def _best(repeats: int, fn: Callable[[], T]) -> tuple[float, float, T]:
    """(least wall-clock seconds, least CPU seconds of this process, the last result) over `repeats` runs."""
    wall = cpu = float("inf")
    result = None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    assert result is not None
    return wall, cpu, result


def bench_secagg(
    *,
    params: int = 1_000_000,
    devices: int = 100,
    neighbours: int | None = None,
    dropout: float = 0.1,
    repeats: int = 3,
    seed: int = 0,
) -> dict[str, float | int]:
    """Times for one round of `devices` devices over `params` parameters, `dropout` of them dropping after
    sharing keys (so their masking keys are reconstructed). `neighbours` fixes k (t = k/2 + 1);
    otherwise (k, t) come from `graph.choose_parameters(devices, dropout)`."""
    rng = np.random.default_rng(seed)
    ids = [f"device-{i:05d}" for i in range(devices)]
    k_and_t = None if neighbours is None else (neighbours, neighbours // 2 + 1)
    full = protocol.new_round(1, ids, vector_length=params, clip_norm=1.0, dropout=dropout, k_and_t=k_and_t)
    short = full.model_copy(update={"vector_length": 1})
    me = ids[0]
    update = rng.normal(size=params).astype(np.float32) * 1e-3
    timings: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], T]) -> T:
        wall, cpu, result = _best(repeats, fn)
        timings[f"{name}_s"], timings[f"{name}_cpu_s"] = wall, cpu
        return result

    encoded = timed("client_encode", lambda: fixedpoint.encode(update, full.clip_norm, full.scale))
    timed("client_advertise", lambda: SecAggDevice.create(full, me).advertise())
    states = {d: SecAggDevice.create(full, d) for d in ids}
    state = protocol.close_advertise(full, [(d, s.advertise()) for d, s in states.items()])

    timed("client_share_keys", lambda: states[me].share_keys(protocol.neighbour_keys_for(state, me)))
    sent = []
    for d in ids:
        states[d], message = states[d].share_keys(protocol.neighbour_keys_for(state, d))
        sent.append((d, message))
    state, forwards = protocol.close_share_keys(state, sent)

    mine, _, _ = timed("client_mask", lambda: states[me].mask(encoded, forwards[me]))
    others = [d for d in ids if d != me]
    dropped = set(rng.choice(others, size=round(dropout * devices), replace=False).tolist())
    survivors = [d for d in ids if d not in dropped]
    masked = {me: mine}
    for d in survivors[1:]:
        # Only the stage's state matters here, not the vector: mask a one-value input to get it cheaply.
        small, _, _ = states[d].model_copy(update={"params": short}).mask(np.zeros(1, np.uint32), forwards[d])
        masked[d] = small.model_copy(update={"params": full})
    state, requests = protocol.close_masked_input(state, survivors)

    timed("client_unmask", lambda: masked[me].unmask(requests[me]))
    responses: list[tuple[str, UnmaskResponse]] = [(d, masked[d].unmask(requests[d])[1]) for d in survivors]
    secrets = timed("server_reconstruct", lambda: protocol.reconstruct_secrets(state, responses))
    masked_sum = rng.integers(0, 2**32, size=params, dtype=np.uint32)
    timed("server_remove_masks", lambda: protocol.remove_masks(state, secrets, masked_sum))
    timed("prg_expansion", lambda: crypto.prg_uint32(crypto.new_seed(), params))
    for kind in ("_s", "_cpu_s"):
        timings[f"server_unmask{kind}"] = timings[f"server_reconstruct{kind}"] + timings[f"server_remove_masks{kind}"]

    n_graph = graph.neighbours(full.devices, full.neighbours, full.graph_seed)
    pairwise = sum(len(set(n_graph[v]) & set(survivors)) for v in dropped)
    return {
        "params": params,
        "devices": devices,
        "neighbours": full.neighbours,
        "threshold": full.threshold,
        "dropped": len(dropped),
        "server_prg_expansions": len(survivors) + pairwise,
        "masked_input_bytes": 4 * params,
        "advertise_bytes": len(states[me].advertise().model_dump_json()),
        "share_keys_bytes": len(sent[0][1].model_dump_json()),
        "forwarded_bytes": len(forwards[me].model_dump_json()),
        "unmask_bytes": len(responses[0][1].model_dump_json()),
        **timings,
    }
