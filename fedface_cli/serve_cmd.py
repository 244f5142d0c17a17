"""`fedface serve`: run the coordinator under uvicorn."""

from __future__ import annotations

import typer


def serve(
    host: str = typer.Option("127.0.0.1", help="Address to bind"),
    port: int = typer.Option(8000, help="Port to bind"),
    migrate: bool = typer.Option(True, help="Apply database migrations before serving"),
) -> None:
    """Run the coordinator (embedded SQLite/fakeredis unless FEDFACE_DATABASE_URL/FEDFACE_REDIS_URL are set)."""
    import uvicorn

    from coordinator.app import create_app
    from coordinator.settings import get_settings
    from storage.migrate import upgrade_to_head

    settings = get_settings()
    if migrate:
        upgrade_to_head(settings.resolved_database_url)
    uvicorn.run(create_app(settings), host=host, port=port, log_config=None, access_log=False,
                timeout_keep_alive=settings.keep_alive_s)
