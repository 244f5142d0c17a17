"""All coordinator settings, from FEDFACE_* environment variables.

With nothing set the coordinator runs embedded: SQLite, an in-process Redis
stand-in and a local blob directory under `data_dir`."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FEDFACE_", env_file=None, extra="ignore")

    data_dir: Path = Path("fedface-data")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; SQLite under data_dir if unset")
    redis_url: str | None = Field(default=None, description="redis:// URL; in-process fakeredis if unset")
    redis_prefix: str = "fedface:"

    blob_backend: Literal["local", "s3"] = "local"
    blob_dir: Path | None = None
    s3_endpoint_url: str | None = None
    s3_bucket: str = "fedface"
    s3_prefix: str = "blobs/"
    s3_region: str = "us-east-1"
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None

    admin_token: SecretStr | None = Field(
        default=None, description="Admin bearer token; generated into data_dir/admin-token when unset"
    )

    # Intake limits: every size and value a device sends is checked against these.
    max_update_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    max_model_bytes: int = Field(default=512 * 1024 * 1024, gt=0)
    max_num_samples: int = Field(default=100_000, gt=0)
    max_metrics_bytes: int = Field(default=4096, gt=0)

    # HTTP serving.
    keep_alive_s: int = Field(
        default=75, gt=0, le=3600,
        description="How long an idle HTTP connection stays open. Longer than a load balancer's idle timeout"
        " (60 s on most), so the balancer, not this server, closes idle connections: otherwise a request sent"
        " on a connection just as the server closes it fails in transit",
    )

    # Scheduling.
    idle_retry_s: float = Field(default=30.0, gt=0)
    tick_interval_s: float = Field(default=0.5, gt=0)
    tick_min_gap_s: float = Field(
        default=0.25, ge=0,
        description="Least time between two driver passes: under a burst of submissions, each of which wakes the"
        " driver, the passes (and the round-row lock each takes) stay a few per second",
    )
    partial_fold_interval_s: float = Field(
        default=2.0, gt=0, description="How often a replica folds its accepted updates into its durable partial sum"
    )
    partial_fold_batch: int = Field(default=64, gt=0, description="Most updates folded per partial-sum write")
    lease_ttl_s: float = Field(default=5.0, gt=0)
    checkin_rate_per_min: int = Field(default=120, gt=0, description="Per-device check-in rate limit")

    replica_id: str | None = Field(default=None, description="Stable name of this process; random if unset")
    log_level: str = "INFO"
    log_json: bool = True

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'fedface.db').resolve()}"

    @property
    def resolved_blob_dir(self) -> Path:
        return self.blob_dir or self.data_dir / "blobs"

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    return Settings()
