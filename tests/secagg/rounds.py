"""Helpers for the secure-aggregation tests: deterministic rounds and devices driven to a given stage."""

from __future__ import annotations

import hashlib

import numpy as np

from coordinator.secagg import protocol
from fedface_common.secagg import fixedpoint
from fedface_common.secagg.device import SecAggDevice
from fedface_common.secagg.messages import ForwardedShares, SecAggParams


def device_ids(n: int) -> list[str]:
    """UUID-shaped ids, as the coordinator's are, in sorted order."""
    return sorted(f"{hashlib.sha256(str(i).encode()).hexdigest()[:8]}-0000-4000-8000-{i:012d}" for i in range(n))


def make_params(n: int, k: int, t: int, *, length: int = 64, clip: float = 1.0, min_survivors: int | None = None,
                round_id: int = 1, seed: int = 0) -> SecAggParams:
    return SecAggParams(
        round_id=round_id, devices=device_ids(n), neighbours=k, threshold=t,
        graph_seed=hashlib.sha256(f"graph-{seed}".encode()).digest(), vector_length=length, clip_norm=clip,
        scale=fixedpoint.choose_scale(n, clip), min_survivors=min_survivors or max(t, 2),
    )


def float_inputs(params: SecAggParams, seed: int = 0) -> dict[str, np.ndarray]:
    """Updates of norm around and beyond the clip bound, so that clipping is exercised."""
    rng = np.random.default_rng(seed)
    return {d: rng.normal(size=params.vector_length) * params.clip_norm * rng.uniform(0.1, 2.0) / np.sqrt(
        params.vector_length) for d in params.devices}


def encoded(params: SecAggParams, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {d: fixedpoint.encode(x, params.clip_norm, params.scale) for d, x in inputs.items()}


def through_share_keys(
    params: SecAggParams,
) -> tuple[dict[str, SecAggDevice], protocol.ServerRound, dict[str, ForwardedShares]]:
    """Every device advertises and shares keys; the server closes both stages."""
    devices = {d: SecAggDevice.create(params, d) for d in params.devices}
    state = protocol.close_advertise(params, [(d, s.advertise()) for d, s in devices.items()])
    sent = []
    for d in params.devices:
        devices[d], message = devices[d].share_keys(protocol.neighbour_keys_for(state, d))
        sent.append((d, message))
    state, forwards = protocol.close_share_keys(state, sent)
    return devices, state, forwards
