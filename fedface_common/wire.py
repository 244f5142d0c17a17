"""Wire schemas of the device API, shared by the coordinator and the agent."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fedface_common.secagg.task import SecAggTask
from fedface_common.text import PlainText

API_PREFIX = "/v1"

# Headers that carry a submission's metadata beside its safetensors body.
HEADER_NUM_SAMPLES = "X-FedFace-Num-Samples"
HEADER_BASE_VERSION = "X-FedFace-Base-Version"
HEADER_CLIENT_METRICS = "X-FedFace-Client-Metrics"

# Names of tensors in an update that are not backbone deltas.
CLASS_EMBEDDING_TENSOR = "fedface.class_embedding"
# The embedding BatchNorm's running statistics: with `embedding_stats`, their
# "deltas" are the device's moments, averaged rather than stepped along.
EMBEDDING_BN_MEAN = "bn_embedding.running_mean"
EMBEDDING_BN_VAR = "bn_embedding.running_var"
EMBEDDING_BN_WEIGHT = "bn_embedding.weight"
EMBEDDING_BN_BIAS = "bn_embedding.bias"
# The 1x1 convolution whose output the embedding BatchNorm normalises.
EMBEDDING_PROJECTION = "project.weight"
# With `embedding_lda_dims`, the moments of the projection's input h (the pooled
# head features, width c) over the device's photos, per photo: the mean (c,), the
# second moment about zero (c, c), and the within-class scatter about the device's
# own mean (c, c; one device, one person).
HEAD_MEAN = "fedface.head_mean"
HEAD_SECOND_MOMENT = "fedface.head_second_moment"
HEAD_WITHIN_SCATTER = "fedface.head_within_scatter"
MANIFEST_METADATA_KEY = "fedface.manifest"
# Pretraining writes non-trainable extras into the model file under this prefix;
# the coordinator serves the weights without them and the centres separately.
PRETRAIN_EXTRA_PREFIX = "pretrain."
PRETRAIN_CLASS_CENTRES = PRETRAIN_EXTRA_PREFIX + "class_centres"
# The one tensor of a class-centres blob the coordinator ships to devices.
CLASS_CENTRES_TENSOR = "class_centres"


class RoundState(StrEnum):
    """A round's life: collecting -> aggregating -> committed | failed, or cancelled by the operator."""

    COLLECTING = "collecting"
    AGGREGATING = "aggregating"
    COMMITTED = "committed"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_ROUND_STATES = (RoundState.COLLECTING, RoundState.AGGREGATING)
FINAL_ROUND_STATES = (RoundState.COMMITTED, RoundState.FAILED, RoundState.CANCELLED)


class EnrollRequest(BaseModel):
    token: PlainText = Field(min_length=8, max_length=256)
    label: PlainText | None = Field(default=None, max_length=128, description="Free-form name of the device")


class EnrollResponse(BaseModel):
    device_id: str
    credential: str = Field(description="Shown once; the coordinator keeps only its hash")


class TrainingConfig(BaseModel):
    """What the device needs to train one round. Values come from the round's config."""

    algorithm: str
    local_epochs: int = Field(ge=0, le=100)  # 0: send w_c and a zero delta (an enrollment round)
    batch_size: int = Field(ge=1, le=4096)
    learning_rate: float = Field(gt=0, le=10)
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0, le=1)
    params: dict[str, Any] = Field(default_factory=dict, description="Algorithm-specific settings")


class Task(BaseModel):
    round_id: int
    model_version: int
    model_sha256: str
    deadline: datetime
    training: TrainingConfig
    has_class_embedding: bool = Field(
        description="Whether the coordinator holds a class embedding for this device (GET it from the round)"
    )
    extra_blobs: dict[str, str] = Field(
        default_factory=dict, description="Name -> sha256 of further tensors the round ships (public centres)"
    )
    secagg: SecAggTask | None = Field(default=None, description="A secure round's current stage and its inputs")


class CheckInResponse(BaseModel):
    status: Literal["task", "wait"]
    task: Task | None = None
    retry_after_s: float | None = Field(default=None, description="When status is 'wait': come back after this")


class SubmitResponse(BaseModel):
    update_id: int
    round_id: int
    sha256: str
    status: Literal["accepted"]


class ProblemError(BaseModel):
    """One reason a request failed validation: where, and why (never the value sent)."""

    loc: list[str | int]
    msg: str


class Problem(BaseModel):
    """RFC 9457 problem details, with a stable machine-readable code.

    Some problems carry further members (`limit`, `retry_after_s`); a refused
    request body lists its first few validation errors and how many there were."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    code: str
    detail: str | None = None
    errors: list[ProblemError] | None = None
    error_count: int | None = Field(default=None, description="How many validation errors; `errors` lists the first")
