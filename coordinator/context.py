"""Process-wide resources, built once at start-up and shared by requests."""

from __future__ import annotations

import asyncio
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from coordinator.security import hash_secret
from coordinator.settings import Settings
from fedface_common.tensors import TensorSpec
from fedface_common.update_codec import Encoding
from storage.blobs import BlobStore
from storage.blobs.factory import make_blob_store
from storage.blobs.guards import LeaseKeyGuard
from storage.db import make_engine, make_sessionmaker
from storage.redis_state import CoordinationState, make_redis


@dataclass(frozen=True)
class RoundUpdateSpec:
    """What a round's updates hold (F32 deltas) and what their bodies hold (in the round's encoding)."""

    f32: TensorSpec
    wire: TensorSpec
    encoding: Encoding


@dataclass
class AppContext:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    state: CoordinationState
    blobs: BlobStore
    replica_id: str
    admin_token_hash: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # What an update must contain, per round. A round's algorithm and base
    # version never change, so this is safe to keep for the process's life.
    update_specs: dict[int, RoundUpdateSpec] = field(default_factory=dict)

    def wake_driver(self) -> None:
        """Let this process's round driver look now instead of at its next tick."""
        self.wake.set()

    async def close(self) -> None:
        await self.engine.dispose()
        await self.state.redis.aclose()


def _admin_token_hash(settings: Settings) -> str:
    """The admin secret is kept only as a hash in memory. Without one
    configured, a random token is written (0600) under data_dir for the operator."""
    if settings.admin_token is not None:
        return hash_secret(settings.admin_token.get_secret_value())
    path: Path = settings.data_dir / "admin-token"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        token = "ffa_" + secrets.token_urlsafe(32)
        path.touch(mode=0o600)
        path.write_text(token + "\n")
    return hash_secret(path.read_text().strip())


def build_context(settings: Settings) -> AppContext:
    engine = make_engine(settings.resolved_database_url)
    state = CoordinationState(make_redis(settings.redis_url), settings.redis_prefix)
    return AppContext(
        settings=settings,
        engine=engine,
        sessions=make_sessionmaker(engine),
        state=state,
        blobs=make_blob_store(settings, guard=LeaseKeyGuard(state)),
        replica_id=settings.replica_id or f"{socket.gethostname()}-{secrets.token_hex(3)}",
        admin_token_hash=_admin_token_hash(settings),
    )
