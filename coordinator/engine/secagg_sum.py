"""Unmasking a secure round's sum, for the round's aggregation.

The masked inputs are folded here, at the close, rather than into the replicas' partial sums: a
uint32 add per coordinate is cheap next to the unmasking's PRG expansions, and folding once from the
accepted rows keeps "each input counted once" trivially true. (`protocol.accumulate` is commutative,
so partial sums would fold like any other; they would only save reading the blobs once.)

Everything is re-read from Postgres and the blob store, so a driver that died while unmasking simply
runs this again: the same rows give the same sum.

The unmasked sum is decoded from fixed point, each group at its scale (fedface_common/secagg/groups.py),
and handed to the strategy as the accumulator a plain round would give it: sums per tensor, the total
weight and the count. Without `max_weight` each survivor weighs 1 and the total weight is their number;
with it the sums are of w x each clipped input and the total weight is sum(w), read from the weight
coordinate. The committed model is base + server_lr x the survivors' (weighted) mean clipped update, and
a statistics round's moments their (weighted) mean, within `error_bound_mean` (and
`statistics_error_bound_mean`) per coordinate: the rounding, at most 1/2 per input over the group's scale,
and with weights the total weight's own rounding. With distributed DP the inputs are the devices' noised
updates, so that mean carries their noise, and the bound is against the mean of the inputs as the devices
encoded them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from coordinator.context import AppContext
from coordinator.engine.folding import AggregationError
from coordinator.secagg import protocol
from coordinator.secagg.errors import SecAggProtocolError
from coordinator.services.secagg.layout import round_layout
from coordinator.services.secagg.state import load
from coordinator.strategies import Accumulator, Strategy
from coordinator.strategies.dp import DeviceNoise, DpAggregation
from coordinator.strategies.robust import BoundedAggregation, RoundBounds
from fedface_common.dp_noise import NORM_TAIL, norm_bound
from fedface_common.secagg import fixedpoint, groups
from fedface_common.secagg.messages import MASKED_INPUT_TENSOR, SecAggParams, UnmaskResponse
from fedface_common.secagg.task import STATISTICS, UPDATE, Stage
from fedface_common.tensors import decode
from storage.models import ModelVersion, Update
from storage.repositories.privacy import PrivacyRepository
from storage.repositories.secagg import SecAggRepository


async def secure_sum(ctx: AppContext, round_id: int, strategy: Strategy, rows: list[Update],
                     base: ModelVersion) -> tuple[BoundedAggregation, Accumulator, dict[str, Any]]:
    """The aggregation to finalize with, the survivors' unmasked sum as its accumulator, and the metrics."""
    started = time.perf_counter()
    async with ctx.sessions() as session:
        row, state = await load(session, round_id)
        raw = await SecAggRepository(session).messages(round_id, Stage.UNMASK)
        dp_state = await PrivacyRepository(session).round_state(round_id) if strategy.params.dp else None
    if row is None or state is None or state.masked is None:
        raise AggregationError("the secure round has no unmasking state")
    responses = [(str(d), UnmaskResponse.model_validate_json(b)) for d, b in raw]
    survivors = set(state.masked)
    partial: np.ndarray | None = None
    for u in rows:
        if str(u.device_id) not in survivors:
            continue  # uploaded, but not in the sum the unmasking was asked for (never the case once closed)
        vector = decode(await ctx.blobs.get_bytes(u.blob_sha256))[MASKED_INPUT_TENSOR]
        partial = await asyncio.to_thread(protocol.accumulate, partial, vector)
    counted = sum(1 for u in rows if str(u.device_id) in survivors)
    if partial is None or counted != len(survivors):
        raise AggregationError(f"{counted} of the {len(survivors)} masked inputs in the sum are stored")
    try:
        total = await asyncio.to_thread(protocol.unmask, state, responses, partial)
    except SecAggProtocolError as exc:
        raise AggregationError(f"unmasking failed: {exc.code}: {exc}") from exc
    p, layout, n = state.params, round_layout(strategy, base), len(survivors)
    try:
        decoded = groups.decode_groups(p, layout, total, n)
    except ValueError as exc:
        raise AggregationError(str(exc)) from exc
    norms = _check_mean_norms(decoded, p)
    acc = Accumulator(sums=decoded.sums, total_weight=decoded.total_weight, count=n)
    if dp_state is not None:
        distributed = dp_state.get("mode") == "distributed"
        devices = DeviceNoise(p.noise_stddev, p.min_survivors, n) if distributed else None
        aggregation: BoundedAggregation = DpAggregation(strategy, dp_state, device_noise=devices)
    else:
        # The devices clipped to clip_norm and capped their weight themselves: those are the round's bounds.
        cap = float(p.max_weight) if p.max_weight is not None else None
        aggregation = BoundedAggregation(strategy, strategy.params.robust, RoundBounds(p.clip_norm, cap))
    metrics: dict[str, Any] = {
        **row.metrics, "devices": len(p.devices), "survivors": n, "neighbours": p.neighbours,
        "threshold": p.threshold, "clip_norm": p.clip_norm, "scale": p.scale,
        "weights": "unit" if p.max_weight is None else "samples",
        "error_bound_sum": fixedpoint.max_abs_error(n, p.scale),
        "error_bound_mean": groups.mean_error_bound(decoded, p.clip_norm, p.scale),
        "unmask_s": round(time.perf_counter() - started, 4)}
    if p.max_weight is not None:  # sum(w) is in the sum the server unmasks: nothing more is released
        metrics.update(max_weight=p.max_weight, total_weight=decoded.total_weight)
    if p.statistics_clip_norm is not None and p.statistics_scale is not None:
        metrics.update(statistics_clip_norm=p.statistics_clip_norm, statistics_scale=p.statistics_scale,
                       statistics_error_bound_mean=groups.mean_error_bound(decoded, p.statistics_clip_norm,
                                                                           p.statistics_scale))
    if dp_state is None:  # with DP, a statistic of the exact sum would be a release the accountant misses
        metrics["mean_norm"] = norms[UPDATE]
        if STATISTICS in norms:
            metrics["statistics_mean_norm"] = norms[STATISTICS]
    return aggregation, acc, metrics


def _check_mean_norms(decoded: groups.GroupedSum, p: SecAggParams) -> dict[str, float]:
    """Each group's mean norm, checked against its clip (`_check_mean_norm`); the statistics group carries
    no noise (SecAggParams refuses device noise with statistics)."""
    split = decoded.groups
    norms: dict[str, float] = {UPDATE: _check_mean_norm(decoded, split.update, p.clip_norm, p.scale, p.noise_stddev)}
    if split.statistics and p.statistics_clip_norm is not None and p.statistics_scale is not None:
        norms[STATISTICS] = _check_mean_norm(decoded, split.statistics, p.statistics_clip_norm, p.statistics_scale,
                                             what="statistics_clip_norm")
    return norms


def _check_mean_norm(decoded: groups.GroupedSum, slots: Sequence[groups.Slot], clip_norm: float, scale: float,
                     noise_stddev: float = 0.0, what: str = "clip_norm") -> float:
    """The weighted mean of inputs of norm <= clip_norm (weights in (0, 1], unit without max_weight) has norm
    <= clip_norm; decoding moves it by at most `groups.mean_norm_slack` (the rounding of each coordinate and of
    the total weight). A mean beyond both means some input was not clipped (the server cannot see which, so
    the clip is what bounds one device's influence under secure aggregation) or the sum wrapped: the round
    fails rather than commit it.

    With distributed DP (unit weights: the mean divides by n) each input also carries N(0, noise_stddev^2) per
    coordinate, so the sum carries noise of stddev noise_stddev sqrt(n) per coordinate, whose norm is below
    noise_stddev sqrt(n) (sqrt(d) + t) but with probability exp(-t^2 / 2) (t = NORM_TAIL = 10: 1.9e-22;
    fedface_common/dp_noise.py `norm_bound`). The check allows that much more: an honest round fails it only
    with that probability, and an input not clipped can hide in that allowance, which grows with the noise."""
    norm = decoded.norm(slots) / decoded.total_weight
    slack = groups.mean_norm_slack(decoded, slots, clip_norm, scale)
    if noise_stddev > 0:
        size = sum(s.size for s in slots)
        slack += norm_bound(noise_stddev * np.sqrt(decoded.inputs), size, NORM_TAIL) / decoded.total_weight
    if norm > clip_norm * (1 + 1e-9) + slack:
        raise AggregationError(f"the unmasked mean has L2 norm {norm:.4g}, above {what} {clip_norm:g}: an input"
                               " was not clipped, or the sum wrapped")
    return norm
