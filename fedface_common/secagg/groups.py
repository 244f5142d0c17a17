"""A secure round's input in groups, and the device's weight: what the device encodes and the server decodes.

The protocol masks and sums one uint32 vector; this module says what its coordinates mean. The layout
(fedface_common/secagg/task.py) names each tensor's place and group:

* `update`: the deltas, clipped together to `params.clip_norm` (and noised under distributed DP), encoded at
  `params.scale`.
* `statistics`: a statistics round's moments, clipped together to `params.statistics_clip_norm` and encoded
  at `params.statistics_scale`. Their magnitudes differ from the deltas' by orders of magnitude: one clip for
  both would either clip the moments away or leave the deltas a few fixed-point steps.
* `WEIGHT_TENSOR` (weighted rounds only, in the update group): one coordinate, w x clip_norm.

A device of weight w in (0, 1] sends w x each clipped group. Every coordinate then stays within its group's
bound (|w x_i| <= |x_i| <= C, and w C <= C), so `fixedpoint`'s no-wrap argument holds per group unchanged:
n inputs of coordinates within B sum without wrapping at a scale with n (B scale + 1/2) <= 2^31 - 1, each
group's scale chosen for its own B. Distributed DP's noise is refused with weights and with statistics
(SecAggParams), so B = C + 10 sigma only ever applies to the unweighted update group.

Decoded, the sum holds sum(w x) per group and sum(w) C in the weight coordinate: divided by sum(w), the
sample-weighted mean with counts capped at max_weight."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedface_common.secagg import fixedpoint
from fedface_common.secagg.messages import SecAggParams
from fedface_common.secagg.task import STATISTICS, UPDATE, WEIGHT_TENSOR, Group, LayoutEntry, flatten, vector_length


@dataclass(frozen=True)
class Slot:
    name: str
    shape: tuple[int, ...]
    start: int
    size: int


@dataclass(frozen=True)
class Groups:
    """The layout's slots by group; `weight` is the weight coordinate's slot in a weighted round."""

    update: tuple[Slot, ...]
    statistics: tuple[Slot, ...]
    weight: Slot | None

    def of(self, group: Group) -> tuple[Slot, ...]:
        return self.statistics if group == STATISTICS else self.update


def groups_of(params: SecAggParams, layout: Sequence[LayoutEntry]) -> Groups:
    """The layout split by group, refused unless it fits the round's parameters."""
    if vector_length(layout) != params.vector_length:
        raise ValueError(f"the layout holds {vector_length(layout)} values, the round's vector {params.vector_length}")
    slots: dict[Group, list[Slot]] = {UPDATE: [], STATISTICS: []}
    weight, at = None, 0
    for e in layout:
        size = int(np.prod(e.shape, dtype=np.int64))
        slot = Slot(e.name, tuple(e.shape), at, size)
        at += size
        if e.name == WEIGHT_TENSOR:
            if weight is not None or e.shape != [1] or e.group != UPDATE:
                raise ValueError(f"{WEIGHT_TENSOR!r} must be one coordinate of the update group, once")
            weight = slot
        else:
            slots[e.group].append(slot)
    if (weight is not None) != params.weighted:
        raise ValueError("the layout's weight coordinate and the round's max_weight must come together")
    if slots[STATISTICS] and params.statistics_clip_norm is None:
        raise ValueError("the layout has statistics but the round no statistics_clip_norm")
    return Groups(tuple(slots[UPDATE]), tuple(slots[STATISTICS]), weight)


def device_weight(num_samples: int, max_weight: int) -> float:
    """w = min(n, max_weight) / max_weight: in (0, 1], the sample cap of a plain round as a fraction."""
    if num_samples < 1:
        raise ValueError("a weighted round needs the update's sample count (at least 1)")
    return min(num_samples, max_weight) / max_weight


def _gather(update: Mapping[str, np.ndarray], slots: Sequence[Slot]) -> np.ndarray:
    return flatten(update, [LayoutEntry(name=s.name, shape=list(s.shape)) for s in slots])


def _scatter(out: np.ndarray, slots: Sequence[Slot], values: np.ndarray) -> None:
    at = 0
    for s in slots:
        out[s.start:s.start + s.size] = values[at:at + s.size]
        at += s.size


def encode_groups(params: SecAggParams, layout: Sequence[LayoutEntry], update: Mapping[str, np.ndarray],
                  weight: float = 1.0, rng: np.random.Generator | None = None) -> np.ndarray:
    """The device's input as one uint32 vector in layout order: each group clipped to its clip, times
    `weight`, at its scale; the update group noised first under distributed DP."""
    g = groups_of(params, layout)
    if not 0 < weight <= 1 or (weight != 1 and not params.weighted):
        raise ValueError(f"weight {weight} outside (0, 1], or not 1 in an unweighted round")
    out = np.zeros(params.vector_length, dtype=np.uint32)
    deltas = fixedpoint.noised(_gather(update, g.update), params.clip_norm, params.noise_stddev, rng) * weight
    bound = fixedpoint.coordinate_bound(params.clip_norm, params.noise_stddev)
    _scatter(out, g.update, fixedpoint.quantize(deltas, bound, params.scale))
    if g.weight is not None:
        out[g.weight.start] = fixedpoint.quantize(np.array([weight * params.clip_norm]), params.clip_norm,
                                                  params.scale)[0]
    if g.statistics:
        clip, scale = params.statistics_clip_norm, params.statistics_scale
        assert clip is not None and scale is not None  # groups_of refuses statistics without them
        moments = fixedpoint.clip_to_norm(_gather(update, g.statistics), clip) * weight
        _scatter(out, g.statistics, fixedpoint.quantize(moments, clip, scale))
    return out


@dataclass(frozen=True)
class GroupedSum:
    """The decoded sum: sum(w x) per tensor, sum(w) (n when unweighted) and what bounds the error."""

    sums: dict[str, np.ndarray]
    total_weight: float
    inputs: int
    weight_error: float  # most |decoded sum(w) - sum(w)|: 0 with unit weights
    groups: Groups

    def norm(self, slots: Sequence[Slot]) -> float:
        return math.sqrt(sum(float(np.sum(self.sums[s.name] ** 2)) for s in slots))


def decode_groups(params: SecAggParams, layout: Sequence[LayoutEntry], total: np.ndarray, inputs: int) -> GroupedSum:
    """The uint32 sum of `inputs` encodings decoded per group. A weighted sum whose weight coordinate lies
    outside (0, clip_norm x inputs] (beyond rounding) is refused: no honest inputs give it."""
    g = groups_of(params, layout)
    sums: dict[str, np.ndarray] = {}
    for group, scale in ((UPDATE, params.scale), (STATISTICS, params.statistics_scale)):
        for s in g.of(group):
            assert scale is not None
            sums[s.name] = fixedpoint.decode(total[s.start:s.start + s.size], scale).reshape(s.shape)
    if g.weight is None:
        return GroupedSum(sums, float(inputs), inputs, 0.0, g)
    coordinate = float(fixedpoint.decode(total[g.weight.start:g.weight.start + 1], params.scale)[0])
    most = params.clip_norm * inputs + fixedpoint.max_abs_error(inputs, params.scale)
    if not 0 < coordinate <= most:
        raise ValueError(f"the weight coordinate sums to {coordinate:.6g}, outside (0, {most:.6g}] (clip_norm x"
                         f" {inputs} inputs): an input encoded a weight no device has, or the sum wrapped")
    return GroupedSum(sums, coordinate / params.clip_norm, inputs,
                      fixedpoint.max_abs_error(inputs, params.scale) / params.clip_norm, g)


def mean_error_bound(decoded: GroupedSum, clip: float, scale: float) -> float:
    """Most |decoded mean - mean of the inputs as encoded| per coordinate of a group of this clip and scale.

    The mean is sum(w x) / sum(w), both decoded: with S, T the true sums and dS, dT their rounding,
    (S + dS) / (T + dT) - S / T = (dS - (S / T) dT) / (T + dT), and |S / T| <= clip per coordinate (a
    weighted mean of inputs within the clip), so the error is at most (|dS| + clip |dT|) / decoded T."""
    return (fixedpoint.max_abs_error(decoded.inputs, scale) + clip * decoded.weight_error) / decoded.total_weight


def mean_norm_slack(decoded: GroupedSum, slots: Sequence[Slot], clip: float, scale: float) -> float:
    """How far beyond `clip` the decoded mean of a group's honest inputs can reach: the per-coordinate
    rounding over the group's coordinates, plus the clip scaled by the total weight's rounding."""
    size = sum(s.size for s in slots)
    return (math.sqrt(size) * fixedpoint.max_abs_error(decoded.inputs, scale)
            + clip * decoded.weight_error) / decoded.total_weight
