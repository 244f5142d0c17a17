"""Fixtures of the fault-injection suite: a Postgres cluster and a Redis
server of each test's own (the shared ones on 5432 and 6379 are never
stopped), coordinator processes to kill, and a log of every answer seen."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from migrations.runner import upgrade_to_head
from tests.conftest import ADMIN_TOKEN, REDIS_URL
from tests.support.faults import AnswerLog
from tests.support.proc import CoordinatorProcess
from tests.support.services import (
    PostgresCluster,
    RedisServer,
    postgres_cluster,
    postgres_missing,
    redis_missing,
    redis_server,
)


@pytest.fixture
def answers() -> AnswerLog:
    return AnswerLog()


@pytest.fixture
def private_postgres() -> Iterator[PostgresCluster]:
    """A migrated cluster on its own port, which the test may stop and start."""
    reason = postgres_missing()
    if reason:
        pytest.skip(reason)
    with postgres_cluster() as cluster:
        upgrade_to_head(cluster.url)
        yield cluster


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    reason = redis_missing()
    if reason:
        pytest.skip(reason)
    with redis_server(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def proc_env(database_url: str, redis_prefix: str, tmp_path: Path) -> dict[str, str]:
    """Settings of a coordinator process on the shared Postgres and Redis."""
    return {
        "FEDFACE_DATABASE_URL": database_url, "FEDFACE_REDIS_URL": REDIS_URL, "FEDFACE_REDIS_PREFIX": redis_prefix,
        "FEDFACE_DATA_DIR": str(tmp_path / "data"), "FEDFACE_ADMIN_TOKEN": ADMIN_TOKEN,
        "FEDFACE_LEASE_TTL_S": "1.0", "FEDFACE_TICK_INTERVAL_S": "0.05", "FEDFACE_LOG_JSON": "true",
    }


@pytest.fixture
def processes() -> Iterator[list[CoordinatorProcess]]:
    """Coordinator processes a test started; whatever is still running is stopped at the end."""
    started: list[CoordinatorProcess] = []
    yield started
    for p in started:
        p.stop()
