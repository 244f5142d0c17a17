"""Alembic environment. The URL comes from the caller (storage.migrate) or from
FEDFACE_DATABASE_URL, converted to a sync driver."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine, pool

import storage.models  # noqa: F401  (registers the tables on Base.metadata)
from storage.db import Base, to_sync_url

config = context.config
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
