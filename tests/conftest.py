"""Shared fixtures: a real Postgres database (migrated once per session,
truncated per test), a real Redis (a fresh key prefix per test) and the
coordinator served over a real loopback socket."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from sqlalchemy import create_engine, text

from coordinator.settings import Settings
from migrations.runner import upgrade_to_head
from storage.db import Base
from tests.support.live import LiveServer

PG_ADMIN_URL = os.environ.get("FEDFACE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("FEDFACE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# Production mode (a database or Redis is configured) refuses short or placeholder admin tokens.
ADMIN_TOKEN = "test-admin-token-6f1d0c8e2b9a4d7f93e5a1c0b8d2f4e6"


def _pg_url(dbname: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + dbname


def create_database(name: str) -> str:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return _pg_url(name)


def drop_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A migrated Postgres database for the whole session."""
    name = f"fedface_test_{os.getpid()}"
    url = create_database(name)
    upgrade_to_head(url)
    yield url
    drop_database(name)


@pytest.fixture
def database_url(pg_database: str) -> str:
    """The session database, emptied before each test."""
    engine = create_engine(pg_database.replace("postgresql://", "postgresql+psycopg://"))
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return pg_database


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    prefix = f"fftest:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def settings(database_url: str, redis_prefix: str, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", database_url=database_url, redis_url=REDIS_URL, redis_prefix=redis_prefix,
        admin_token=ADMIN_TOKEN,  # type: ignore[arg-type]
        tick_interval_s=0.05, lease_ttl_s=2.0, idle_retry_s=5.0, max_update_bytes=4 * 1024 * 1024,
        log_json=True,
    )


@pytest.fixture
def server(settings: Settings) -> Iterator[LiveServer]:
    srv = LiveServer(settings)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def data_root() -> Path:
    root = Path(os.environ.get("FEDFACE_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    if not (root / "protocol" / "clients.txt").is_file():
        pytest.skip(f"face data not found at {root} (set FEDFACE_DATA)")
    return root


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """An S3-compatible server on a loopback port (moto's server mode)."""
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
