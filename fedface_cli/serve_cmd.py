"""`fedface serve`: run the coordinator under uvicorn."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from coordinator.settings import Settings


def settings_or_exit(command: str) -> Settings:
    """The FEDFACE_* settings, or a message per invalid setting and exit status 2."""
    from pydantic import ValidationError

    from coordinator.settings import get_settings

    try:
        return get_settings()
    except ValidationError as exc:
        # Each message names its setting; the values stay out of the output (hide_input_in_errors).
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"])
            typer.echo(f"fedface {command}: invalid settings: {where + ': ' if where else ''}{error['msg']}", err=True)
        raise typer.Exit(2) from None


def serve(
    host: str = typer.Option("127.0.0.1", help="Address to bind"),
    port: int = typer.Option(8000, help="Port to bind"),
    migrate: bool = typer.Option(True, help="Apply database migrations before serving"),
) -> None:
    """Run the coordinator (embedded SQLite/fakeredis unless FEDFACE_DATABASE_URL/FEDFACE_REDIS_URL are set)."""
    import uvicorn

    from coordinator.app import create_app
    from migrations.runner import upgrade_to_head

    settings = settings_or_exit("serve")
    if migrate:
        upgrade_to_head(settings.resolved_database_url)
    uvicorn.run(create_app(settings), host=host, port=port, log_config=None, access_log=False,
                timeout_keep_alive=settings.keep_alive_s)
