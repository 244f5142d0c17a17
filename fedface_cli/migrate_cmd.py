"""`fedface migrate`: apply the database migrations and exit (a Kubernetes Job runs this)."""

from __future__ import annotations


def migrate() -> None:
    """Upgrade the configured database (FEDFACE_DATABASE_URL, or the embedded SQLite) to the latest schema."""
    from coordinator.settings import get_settings
    from storage.migrate import upgrade_to_head

    upgrade_to_head(get_settings().resolved_database_url)
