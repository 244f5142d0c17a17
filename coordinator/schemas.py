"""Request and response bodies of the admin API (the device API's live in
fedface_common.wire, since the agent needs them too)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedface_common.text import PlainJsonObject, PlainText


class RoundConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    algorithm: PlainText = Field(default="fedface", max_length=32)
    target_devices: int = Field(default=10, ge=1, le=100_000)
    min_devices: int = Field(default=1, ge=1, le=100_000)
    over_selection: float = Field(default=1.3, ge=1.0, le=10.0)
    deadline_s: float = Field(default=600.0, gt=0, le=7 * 24 * 3600)
    # 0 makes an enrollment round: each device sends the class embedding of
    # its photos under the served model and a zero backbone delta, so the
    # server can spread every identity's row before any device trains on it.
    local_epochs: int = Field(default=1, ge=0, le=100)
    batch_size: int = Field(default=32, ge=1, le=4096)
    learning_rate: float = Field(default=0.01, gt=0, le=10)
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0, le=1)
    params: PlainJsonObject = Field(default_factory=dict, description="Algorithm parameters (see docs)")
    continuous_rounds: int = Field(default=0, ge=0, le=100_000, description="Start this many more rounds after")

    @model_validator(mode="after")
    def _quorum_fits(self) -> RoundConfig:
        if self.min_devices > self.target_devices:
            raise ValueError("min_devices cannot exceed target_devices")
        return self


class RoundOut(BaseModel):
    id: int
    state: str
    algorithm: str
    config: dict[str, Any]
    base_version_id: int
    result_version_id: int | None
    continuous_remaining: int
    created_at: datetime
    deadline_at: datetime
    closed_at: datetime | None
    finished_at: datetime | None
    failure_reason: str | None
    metrics: dict[str, Any]
    privacy: dict[str, Any] | None = Field(
        default=None, description="A DP round's plan and the epsilon it takes the ledger to; null without DP")
    selected: int
    submitted: int
    accepted: int
    rejected: int


class ModelVersionOut(BaseModel):
    id: int
    parent_id: int | None
    round_id: int | None
    sha256: str
    size_bytes: int
    manifest: dict[str, Any]
    metrics: dict[str, Any]
    note: str | None
    has_class_centres: bool
    served: bool
    created_at: datetime
    pruned_at: datetime | None = Field(
        default=None, description="When retention released the weights (the metrics remain); null while kept")


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_uses: int = Field(default=1, ge=1, le=1_000_000)
    ttl_s: float = Field(default=24 * 3600, gt=0, le=365 * 24 * 3600)
    note: PlainText | None = Field(default=None, max_length=256)


class TokenOut(BaseModel):
    id: str
    token: str = Field(description="Shown once; only its hash is stored")
    max_uses: int
    expires_at: datetime


class TokenInfoOut(BaseModel):
    """An issued token as listed: never the token itself nor its hash."""

    id: str
    note: str | None
    uses: int
    max_uses: int
    expires_at: datetime
    created_at: datetime
    revoked_at: datetime | None


class DeviceOut(BaseModel):
    id: str
    label: str | None
    created_at: datetime
    last_seen_at: datetime | None
    revoked_at: datetime | None


class AuditOut(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    target: str | None
    details: dict[str, Any]


class CollectedObject(BaseModel):
    key: str = Field(description="A blob's sha256, or a staging file's name")
    size_bytes: int
    age_s: float


class BlobGcReport(BaseModel):
    """One pass of the blob collector: what it removed (with `dry_run`, what it would remove)."""

    dry_run: bool
    at: datetime
    grace_s: float
    staging_max_age_s: float
    update_retention_s: float
    blobs_scanned: int
    blobs_young: int = Field(description="Younger than the grace period: kept whether referenced or not")
    blobs_referenced: int = Field(description="Old enough, but still referenced: kept")
    blobs_recommitted: int = Field(
        description="Unreferenced when listed, but committed again (or removed by another pass) before removal")
    blobs_removed: list[CollectedObject]
    staging_removed: list[CollectedObject]
    bytes_removed: int
    versions_pruned: list[int] = Field(
        default_factory=list, description="Model versions retention pruned in this pass (their weights go with it)")


class PrivacyRoundOut(BaseModel):
    round_id: int
    sampling_probability: float
    noise_multiplier: float
    clip: float
    delta: float
    epsilon: float = Field(description="Epsilon of the ledger once this round committed, at this round's delta")


class PrivacyOut(BaseModel):
    """The privacy ledger: epsilon over the committed DP rounds, recomposed from their stored q and z."""

    delta: float | None
    epsilon: float
    dp_rounds: int
    non_private_rounds: int = Field(description="Committed rounds without DP: no epsilon covers their devices")
    epsilon_budget: float | None = Field(description="The deployment's ceiling (FEDFACE_DP_EPSILON_BUDGET)")
    rounds: list[PrivacyRoundOut]
