"""Only Alembic creates the schema; models and migrations must not drift."""

from __future__ import annotations

import uuid

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from migrations.runner import downgrade_to_base, upgrade_to_head
from storage.db import Base
from tests.conftest import create_database, drop_database


def test_upgrade_head_matches_models_and_downgrades_cleanly() -> None:
    name = f"fedface_migr_{uuid.uuid4().hex[:8]}"
    url = create_database(name)
    try:
        upgrade_to_head(url)
        engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(ctx, Base.metadata)
            tables = set(inspect(conn).get_table_names())
        assert diff == [], f"models and migrations drift: {diff}"
        assert {t.name for t in Base.metadata.sorted_tables} <= tables
        downgrade_to_base(url)
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
        engine.dispose()
    finally:
        drop_database(name)


def test_sqlite_embedded_schema_comes_from_the_same_migrations(tmp_path: object) -> None:
    from pathlib import Path

    db = Path(str(tmp_path)) / "x" / "fedface.db"
    upgrade_to_head(f"sqlite+aiosqlite:///{db}")
    engine = create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def test_replicas_migrating_at_once_all_succeed() -> None:
    """Several replicas start together and each runs the migrations first."""
    import os
    import subprocess
    import sys

    name = f"fedface_migr_{uuid.uuid4().hex[:8]}"
    url = create_database(name)
    try:
        env = {**os.environ, "FEDFACE_DATABASE_URL": url}
        procs = [subprocess.Popen([sys.executable, "-m", "fedface_cli.main", "migrate"], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(3)]
        outputs = [p.communicate(timeout=120)[0].decode() for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], outputs
        engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        engine.dispose()
    finally:
        drop_database(name)
