"""`fedface migrate`: apply the database migrations and exit (a Kubernetes Job runs this)."""

from __future__ import annotations


def migrate() -> None:
    """Upgrade the configured database (FEDFACE_DATABASE_URL, or the embedded SQLite) to the latest schema."""
    from fedface_cli.serve_cmd import settings_or_exit
    from migrations.runner import upgrade_to_head

    upgrade_to_head(settings_or_exit("migrate").resolved_database_url)
