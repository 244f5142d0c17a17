"""Alembic environment. The URL comes from the caller (migrations.runner) or from
FEDFACE_DATABASE_URL, converted to a sync driver."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine, pool, text

import storage.models  # noqa: F401  (registers the tables on Base.metadata)
from storage.db import Base, to_sync_url

config = context.config
MIGRATION_LOCK_KEY = 0x66656466  # "fedf"
target_metadata = Base.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("FEDFACE_DATABASE_URL")
    if not url:
        raise RuntimeError("no database URL: set FEDFACE_DATABASE_URL or use `fedface migrate`")
    return to_sync_url(url)


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            # Replicas that start together each run `fedface serve`, which migrates
            # first: a session-level advisory lock lets one migrate while the
            # others wait, then find nothing left to do.
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            connection.commit()
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
