"""Micro-benchmark of SecAgg+: a device's extra time per stage, and the server's unmasking time.

Every figure is the minimum wall-clock time over `repeats` runs (the least disturbed by other work on
the machine), in seconds. The round's key and share stages run for real over all devices; only one
device masks a full-length vector. The server's unmasking is timed on the real reconstructed secrets
and the real graph and survivors, against a uniformly random masked sum: its cost (one PRG expansion
per survivor and one per (dropped, surviving neighbour) pair, each followed by a vector add) does not
depend on the values being unmasked."""

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


def _best(repeats: int, fn: Callable[[], T]) -> tuple[float, T]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    assert result is not None
    return best, result


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
    degree = None if neighbours is None else (neighbours, neighbours // 2 + 1)
    full = protocol.new_round(1, ids, vector_length=params, clip_norm=1.0, dropout=dropout, degree=degree)
    short = full.model_copy(update={"vector_length": 1})
    me = ids[0]
    update = rng.normal(size=params).astype(np.float32) * 1e-3

    encode_s, encoded = _best(repeats, lambda: fixedpoint.encode(update, full.clip_norm, full.scale))
    advertise_s, _ = _best(repeats, lambda: SecAggDevice.create(full, me).advertise())
    states = {d: SecAggDevice.create(full, d) for d in ids}
    state = protocol.close_advertise(full, [(d, s.advertise()) for d, s in states.items()])

    share_s, _ = _best(repeats, lambda: states[me].share_keys(protocol.neighbour_keys_for(state, me)))
    sent = []
    for d in ids:
        states[d], message = states[d].share_keys(protocol.neighbour_keys_for(state, d))
        sent.append((d, message))
    state, forwards = protocol.close_share_keys(state, sent)

    mask_s, (mine, _, _) = _best(repeats, lambda: states[me].mask(encoded, forwards[me]))
    others = [d for d in ids if d != me]
    dropped = set(rng.choice(others, size=round(dropout * devices), replace=False).tolist())
    survivors = [d for d in ids if d not in dropped]
    masked = {me: mine}
    for d in survivors[1:]:
        # Only the stage's state matters here, not the vector: mask a one-value input to get it cheaply.
        small, _, _ = states[d].model_copy(update={"params": short}).mask(np.zeros(1, np.uint32), forwards[d])
        masked[d] = small.model_copy(update={"params": full})
    state, requests = protocol.close_masked_input(state, survivors)

    unmask_s, _ = _best(repeats, lambda: masked[me].unmask(requests[me]))
    responses: list[tuple[str, UnmaskResponse]] = [(d, masked[d].unmask(requests[d])[1]) for d in survivors]
    reconstruct_s, secrets = _best(repeats, lambda: protocol.reconstruct_secrets(state, responses))
    masked_sum = rng.integers(0, 2**32, size=params, dtype=np.uint32)
    remove_s, _ = _best(repeats, lambda: protocol.remove_masks(state, secrets, masked_sum))
    prg_s, _ = _best(repeats, lambda: crypto.prg_uint32(crypto.new_seed(), params))

    n_graph = graph.neighbours(full.devices, full.neighbours, full.graph_seed)
    pairwise = sum(len(set(n_graph[v]) & set(survivors)) for v in dropped)
    return {
        "params": params,
        "devices": devices,
        "neighbours": full.neighbours,
        "threshold": full.threshold,
        "dropped": len(dropped),
        "client_encode_s": encode_s,
        "client_advertise_s": advertise_s,
        "client_share_keys_s": share_s,
        "client_mask_s": mask_s,
        "client_unmask_s": unmask_s,
        "server_reconstruct_s": reconstruct_s,
        "server_remove_masks_s": remove_s,
        "server_unmask_s": reconstruct_s + remove_s,
        "server_prg_expansions": len(survivors) + pairwise,
        "prg_expansion_s": prg_s,
        "masked_input_bytes": 4 * params,
        "share_keys_bytes": len(sent[0][1].model_dump_json()),
    }
