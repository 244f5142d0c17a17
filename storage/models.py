"""The relational schema. Postgres is the source of truth for everything that
must survive a crash: devices, credentials (hashed), model versions and their
lineage, rounds, assignments, accepted updates and the admin audit log."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from storage.db import Base, UTCDateTime, utcnow

JsonType = JSON().with_variant(JSONB(), "postgresql")


class EnrollmentToken(Base):
    __tablename__ = "enrollment_tokens"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    max_uses: Mapped[int] = mapped_column(Integer)
    uses: Mapped[int] = mapped_column(Integer, default=0)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    note: Mapped[str | None] = mapped_column(String(256), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Device(Base):
    __tablename__ = "devices"
    # The console pages the fleet newest first by (created_at, id): an index, not a scan, at 100,000 devices.
    __table_args__ = (Index("ix_devices_created_at_id", "created_at", "id"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    credential_hash: Mapped[str] = mapped_column(String(64))
    label: Mapped[str | None] = mapped_column(String(128), nullable=True)
    token_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("enrollment_tokens.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ModelVersion(Base):
    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"), nullable=True)
    # The round that produced this version. No foreign key: rounds point at
    # versions too, and a cycle would complicate every migration.
    round_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    blob_sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    manifest: Mapped[dict[str, Any]] = mapped_column(JsonType)
    tensor_spec: Mapped[dict[str, Any]] = mapped_column(JsonType)
    class_centres_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    note: Mapped[str | None] = mapped_column(String(256), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Set when retention released the weights (coordinator/services/retention.py); the row and its metrics stay.
    pruned_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ServedModel(Base):
    """One row: which model version devices train from."""

    __tablename__ = "served_model"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, default=1)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Round(Base):
    __tablename__ = "rounds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    algorithm: Mapped[str] = mapped_column(String(32))
    config: Mapped[dict[str, Any]] = mapped_column(JsonType)
    base_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    result_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"), nullable=True)
    continuous_remaining: Mapped[int] = mapped_column(Integer, default=0)
    stop_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    deadline_at: Mapped[datetime] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    failure_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    # The norm bound and sample cap the round folds with, fixed once from its first updates when adaptive
    # (coordinator/engine/bounds.py); NULL until then.
    bounds: Mapped[dict[str, Any] | None] = mapped_column(JsonType, nullable=True)
    # A DP round's plan (clip, noise multipliers, sampling probability, the epsilon it takes the ledger to),
    # fixed when it starts, completed at commit (the adaptive clip it leaves the next round); NULL without DP.
    # The privacy ledger is these rows of the committed rounds (coordinator/services/privacy.py).
    dp_state: Mapped[dict[str, Any] | None] = mapped_column(JsonType, nullable=True)


class Assignment(Base):
    __tablename__ = "assignments"
    # Rounds joined per device (the console's device pages) look assignments up by device.
    __table_args__ = (Index("ix_assignments_device_id", "device_id"),)

    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"), primary_key=True)
    device_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    assigned_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Update(Base):
    """An accepted update. Rejected submissions leave no row (they change nothing)."""

    __tablename__ = "updates"
    __table_args__ = (UniqueConstraint("round_id", "device_id", name="uq_updates_round_device"),
                      Index("ix_updates_device_id", "device_id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"), index=True)
    device_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    blob_sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    num_samples: Mapped[int] = mapped_column(Integer)
    base_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    client_metrics: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    replica_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # L2 norm of the decoded delta (class embedding excluded), measured at intake: it sets adaptive bounds.
    delta_norm: Mapped[float | None] = mapped_column(Double, nullable=True)


class ClassEmbedding(Base):
    """FedFace's W: one row per participating device, served only to that device."""

    __tablename__ = "class_embeddings"

    device_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    dim: Mapped[int] = mapped_column(Integer)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuditEntry(Base):
    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(128), nullable=True)
    details: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)


class PartialAggregate(Base):
    """A replica's running sum of the updates it accepted in a round.

    Replicas fold as updates arrive, so closing a round only merges a few
    partial sums. `update_ids` says exactly which updates a partial covers:
    the round's close folds every accepted update not covered by any partial
    (for example those of a replica that died before folding them), so each
    update counts exactly once."""

    __tablename__ = "partial_aggregates"
    __table_args__ = (UniqueConstraint("round_id", "replica_id", name="uq_partial_aggregates_round_replica"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"), index=True)
    replica_id: Mapped[str] = mapped_column(String(64))
    blob_sha256: Mapped[str] = mapped_column(String(64))
    update_ids: Mapped[list[int]] = mapped_column(JsonType)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SecAggRound(Base):
    """A secure round's SecAgg+ progress: its stage, when the stage closes, and the server's protocol state
    (coordinator.secagg.protocol.ServerRound as JSON; public keys and survivor sets, no secrets)."""

    __tablename__ = "secagg_rounds"

    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"), primary_key=True)
    stage: Mapped[str] = mapped_column(String(16))
    stage_deadline_at: Mapped[datetime] = mapped_column(UTCDateTime)
    state: Mapped[dict[str, Any] | None] = mapped_column(JsonType, nullable=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SecAggMessage(Base):
    """One stage message of a secure round: a device's (advertise, share_keys, unmask) or the server's to one
    device (forwarded shares, unmask request). One per (round, stage, device): a second is refused."""

    __tablename__ = "secagg_messages"
    __table_args__ = (UniqueConstraint("round_id", "stage", "device_id", name="uq_secagg_messages_round_stage_device"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"), index=True)
    stage: Mapped[str] = mapped_column(String(16))
    device_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
