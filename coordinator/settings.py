"""All coordinator settings, from FEDFACE_* environment variables.

With nothing set the coordinator runs embedded: SQLite, an in-process Redis
stand-in and a local blob directory under `data_dir`."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from coordinator.weak_secrets import MIN_ADMIN_TOKEN_CHARS, admin_token_weakness


class Settings(BaseSettings):
    # hide_input_in_errors: a settings error must not print the token or a database URL's password.
    model_config = SettingsConfigDict(env_prefix="FEDFACE_", env_file=None, extra="ignore",
                                      hide_input_in_errors=True)

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
    environment: Literal["development", "production"] | None = Field(
        default=None,
        description="In production the coordinator refuses to start with a weak admin token. Unset: production"
        " whenever database_url or redis_url is set, development on the embedded default",
    )

    # Intake limits: every size and value a device sends is checked against these.
    max_update_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    max_model_bytes: int = Field(default=512 * 1024 * 1024, gt=0)
    max_num_samples: int = Field(default=100_000, gt=0)
    max_metrics_bytes: int = Field(default=4096, gt=0)
    max_json_body_bytes: int = Field(
        default=1024 * 1024, gt=0, description="Largest JSON request body; a larger one is refused unread (413)"
    )

    # HTTP serving.
    keep_alive_s: int = Field(
        default=75, gt=0, le=3600,
        description="How long an idle HTTP connection stays open. Longer than a load balancer's idle timeout"
        " (60 s on most), so the balancer, not this server, closes idle connections: otherwise a request sent"
        " on a connection just as the server closes it fails in transit",
    )

    # Scheduling.
    idle_retry_s: float = Field(default=30.0, gt=0)
    outage_retry_after_s: int = Field(
        default=5, ge=1, le=3600,
        description="Retry-After sent with a 503 while Postgres, Redis or the blob store is unavailable: long"
        " enough that a fleet does not hammer a recovering service, short enough that devices return soon after",
    )
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

    # Bounded storage: unreferenced blobs and staging files are collected (coordinator/services/blob_gc.py).
    max_upload_s: float = Field(
        default=1800.0, gt=0,
        description="Longest an upload request may take, its body included; a slower one is refused (408"
        " upload_timeout). A staging file older than this belongs to no upload and is removed",
    )
    blob_gc_interval_s: float = Field(
        default=3600.0, gt=0, description="How often one replica of the fleet collects unreferenced blobs"
    )
    blob_gc_grace_s: float = Field(
        default=7200.0, gt=0,
        description="A blob no row references is removed only once it is this old. Longer than max_upload_s,"
        " so that an upload which has stored its blob but not yet committed its row keeps it",
    )
    update_retention_s: float = Field(
        default=7 * 24 * 3600.0, ge=0,
        description="How long after a round finished its updates and partial sums keep their blobs (the rows"
        " stay); nothing reads them once the round is over",
    )

    keep_model_versions: int = Field(
        default=20, ge=1,
        description="Model versions whose weights retention keeps besides the served version's lineage and the"
        " bases of active rounds: the newest this many. Older ones are pruned (their row and metrics stay, their"
        " weights go with the next blob collection; downloading one answers 410 version_pruned)",
    )

    dp_epsilon_budget: float | None = Field(
        default=None, gt=0,
        description="Epsilon (at each round's delta) beyond which no DP round starts; a round's dp.epsilon_budget"
        " can lower it, not raise it",
    )

    replica_id: str | None = Field(default=None, description="Stable name of this process; random if unset")
    log_level: str = "INFO"
    log_json: bool = True

    @property
    def production(self) -> bool:
        if self.environment is not None:
            return self.environment == "production"
        return bool(self.database_url or self.redis_url)

    @model_validator(mode="after")
    def _refuse_weak_admin_token(self) -> Settings:
        # Unset is fine: a random token is generated (context.py). A weak one set by hand is the
        # shipped placeholder or a test value that reached a real deployment.
        if self.production and self.admin_token is not None:
            weakness = admin_token_weakness(self.admin_token.get_secret_value())
            if weakness is not None:
                raise ValueError(
                    f"FEDFACE_ADMIN_TOKEN (admin_token) {weakness}; in production the coordinator needs a random"
                    f" token of at least {MIN_ADMIN_TOKEN_CHARS} characters: generate one with `openssl rand -hex 32`"
                    " (FEDFACE_ENVIRONMENT=development lifts this check for a local test setup)"
                )
        return self

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

    @model_validator(mode="after")
    def _grace_outlasts_uploads(self) -> Settings:
        if self.blob_gc_grace_s <= self.max_upload_s:
            raise ValueError(
                f"blob_gc_grace_s ({self.blob_gc_grace_s:g}) must be longer than max_upload_s ({self.max_upload_s:g}):"
                " the collector would take the blob of an upload whose row has not committed yet"
            )
        return self

    # The operator console (/console).
    console_secret: SecretStr | None = Field(
        default=None, description="Signs the console's session cookies; generated into data_dir/console-secret when"
        " unset. Set one shared value on every replica behind one address, or a session works on one replica only",
    )
    console_session_s: float = Field(default=8 * 3600.0, gt=0, le=30 * 24 * 3600,
                                     description="How long a console login lasts")
    console_secure_cookie: bool | None = Field(
        default=None, description="Mark the session cookie Secure. Unset: when the request came over https (behind"
        " a TLS proxy, uvicorn's --forwarded-allow-ips makes it see the original scheme)",
    )


@lru_cache
def get_settings() -> Settings:
    return Settings()
