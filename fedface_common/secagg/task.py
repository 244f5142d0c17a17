"""What a secure-aggregation round tells its devices, and the settings an operator gives it.

A secure round runs SecAgg+ as sub-rounds of one round. Each check-in answers with the round's task plus
a `SecAggTask` naming the current stage and what the device needs for it:

* `select`: the round is still choosing its devices; come back after `retry_after_s`.
* `advertise`: `params` is set; create the device state and POST AdvertiseKeys.
* `share_keys`: `neighbour_keys` is set; POST ShareKeys.
* `masked_input`: `forwarded` is set; train, and encode the update in `layout` order with
  `fedface_common.secagg.device.encode_input` (each group of tensors clipped and encoded to fixed point
  with its own clip and scale), mask it, and upload it as the round's update.
* `unmask`: `unmask_request` is set; POST UnmaskResponse.

Groups: the layout's `update` tensors (the deltas) are clipped together to `params.clip_norm`; its
`statistics` tensors (moments of the device's photos, in statistics rounds) to
`params.statistics_clip_norm`. The moments' magnitudes differ from the deltas' by orders of magnitude, so
each group has its own clip and its own fixed-point scale.

Weights: without `params.max_weight` every device weighs 1 and sends no count. With it, a device of n
samples weighs w = min(n, max_weight) / max_weight in (0, 1]: it sends w x its clipped groups and, as the
layout's last coordinate (`WEIGHT_TENSOR`), w x clip_norm, so the sum carries sum(w) and the server
divides by it. The count itself never leaves the device, and no coordinate grows past its group's bound."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from enum import StrEnum
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from fedface_common.secagg.messages import (
    MAX_VECTOR_LENGTH,
    MAX_WEIGHT,
    ForwardedShares,
    NeighbourKeys,
    SecAggParams,
    UnmaskRequest,
)

SECAGG_META_KEY = "fedface.secagg"  # the masked input's MaskedInputMeta, in its safetensors metadata
# The pseudo-tensor of a weighted round's layout: one coordinate, the device's weight times clip_norm.
WEIGHT_TENSOR = "fedface.secagg.weight"
Group = Literal["update", "statistics"]
UPDATE: Group = "update"
STATISTICS: Group = "statistics"


class Stage(StrEnum):
    SELECT = "select"
    ADVERTISE = "advertise"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    UNMASK = "unmask"
    DONE = "done"


# The stages a device posts a JSON message for (the masked input is the update upload).
POSTED_STAGES = (Stage.ADVERTISE, Stage.SHARE_KEYS, Stage.UNMASK)


class SecAggSettings(BaseModel):
    """`params.secagg` of a round: secure aggregation of the updates (SecAgg+), for algorithms whose
    server step needs only the sum."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    dropout: float = Field(default=0.1, ge=0.0, lt=0.5,
                           description="Fraction of devices that may drop out while the sum is still recovered")
    clip_norm: float = Field(default=1.0, gt=0, le=1e6, allow_inf_nan=False,
                             description="Each device clips its whole update to this L2 norm before encoding")
    neighbours: int | None = Field(default=None, ge=1, le=10_000, description="k override (with threshold)")
    threshold: int | None = Field(default=None, ge=1, le=10_000, description="t override (with neighbours)")
    stage_s: float = Field(default=60.0, gt=0, le=24 * 3600,
                           description="Each stage closes when every expected device answered or after this long")
    max_weight: int | None = Field(
        default=None, ge=1, le=MAX_WEIGHT,
        description="Weigh each device by min(samples, max_weight) / max_weight, summed as one more coordinate"
        " (the count never leaves the device); absent: every device weighs 1")
    statistics_clip_norm: float | None = Field(
        default=None, gt=0, le=1e9, allow_inf_nan=False,
        description="Statistics rounds: each device clips its moments (embedding_stats, embedding_lda_dims) to"
        " this L2 norm, apart from its deltas; required when the round sends moments, refused otherwise")

    @model_validator(mode="after")
    def _both_or_neither(self) -> SecAggSettings:
        if (self.neighbours is None) != (self.threshold is None):
            raise ValueError("neighbours and threshold are overridden together")
        return self


class LayoutEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[str, StringConstraints(min_length=1, max_length=300)]
    shape: list[Annotated[int, Field(ge=0, le=MAX_VECTOR_LENGTH)]] = Field(max_length=8)
    group: Group = Field(default=UPDATE, description="Which clip and scale encode it")


class SecAggTask(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64")

    stage: Stage
    stage_deadline: float | None = Field(default=None, description="Seconds left in this stage")
    retry_after_s: float = Field(default=1.0, ge=0)
    answered: bool = Field(default=False, description="This device's answer to the stage is stored: just wait")
    layout: list[LayoutEntry] = Field(default_factory=list, max_length=100_000,
                                      description="The update's tensors, in the order they are flattened")
    params: SecAggParams | None = None
    neighbour_keys: NeighbourKeys | None = None
    forwarded: ForwardedShares | None = None
    unmask_request: UnmaskRequest | None = None


def layout_of(shapes: Mapping[str, Sequence[int]], statistics: Collection[str] = (),
              weighted: bool = False) -> list[LayoutEntry]:
    """The flattening order both sides use: tensor names sorted, those in `statistics` in that group, and
    in a weighted round the weight's coordinate last."""
    layout = [LayoutEntry(name=n, shape=list(shapes[n]), group=STATISTICS if n in statistics else UPDATE)
              for n in sorted(shapes)]
    if weighted:
        layout.append(LayoutEntry(name=WEIGHT_TENSOR, shape=[1]))
    return layout


def vector_length(layout: Sequence[LayoutEntry]) -> int:
    return sum(int(np.prod(e.shape, dtype=np.int64)) for e in layout)


def flatten(update: Mapping[str, np.ndarray], layout: Sequence[LayoutEntry]) -> np.ndarray:
    """The update's tensors as one float64 vector in layout order; refuses missing or misshapen tensors."""
    parts = []
    for e in layout:
        if e.name not in update:
            raise ValueError(f"the update lacks {e.name!r}")
        values = np.asarray(update[e.name])
        if list(values.shape) != e.shape:
            raise ValueError(f"{e.name!r} has shape {list(values.shape)}, the round's is {e.shape}")
        parts.append(values.astype(np.float64).ravel())
    return np.concatenate(parts) if parts else np.zeros(0)


def unflatten(vector: np.ndarray, layout: Sequence[LayoutEntry]) -> dict[str, np.ndarray]:
    if vector.shape != (vector_length(layout),):
        raise ValueError(f"vector of length {vector.size}, the layout holds {vector_length(layout)}")
    out, at = {}, 0
    for e in layout:
        n = int(np.prod(e.shape, dtype=np.int64))
        out[e.name] = vector[at:at + n].reshape(e.shape)
        at += n
    return out


class SecAggAck(BaseModel):
    """The answer to a stage message: stored now, or the same message was stored before."""

    round_id: int
    stage: Stage
    status: Literal["accepted", "replayed"]
