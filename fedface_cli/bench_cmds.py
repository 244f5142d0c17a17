"""`fedface bench ...`: benchmarks of the coordinator (ingest here; others add
their own commands to this sub-app)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Benchmarks of the coordinator.", no_args_is_help=True)

# The figures worth a glance in the terminal; the JSON file holds everything.
_SUMMARY = ("backend", "accepted", "updates_per_s", "mb_per_s", "p50_ms", "p99_ms", "echo_updates_per_s",
            "ratio_to_echo", "server_peak_rss_intake_mb", "server_peak_rss_aggregation_mb", "server_peak_rss_mb",
            "aggregate_s")


@app.command("ingest")
def ingest(
    devices: int = typer.Option(100, min=1, help="Devices that enroll and each submit one update"),
    params: int = typer.Option(1_000_000, min=1, help="Model size in F32 parameters"),
    concurrency: int = typer.Option(32, min=1, help="Concurrent HTTP/1.1 connections"),
    bodies: int = typer.Option(8, min=1, help="Distinct update bodies to pre-generate (client memory)"),
    out: Path = typer.Option(..., dir_okay=False, help="Where to write the JSON result"),
    progress: bool = typer.Option(True, help="Show progress bars"),
) -> None:
    """Update intake throughput, latency and server memory, against a bare ASGI echo baseline.

    Uses Postgres and Redis when FEDFACE_DATABASE_URL and FEDFACE_REDIS_URL are set (in a fresh database
    and key prefix, removed afterwards), else an embedded coordinator in a temp dir."""
    from fedface_lab.bench_ingest import IngestConfig, run_ingest
    from fedface_lab.progress import make_progress

    cfg = IngestConfig(devices=devices, params=params, concurrency=concurrency, distinct_bodies=bodies)
    with make_progress(progress) as bar:
        result = run_ingest(cfg, bar)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    table = Table(title=f"ingest: {devices} devices x {params} params, concurrency {concurrency}",
                  show_header=False, title_justify="left")
    for key in _SUMMARY:
        table.add_row(key, str(result.get(key)))
    Console().print(table)
    typer.echo(f"wrote {out}")
    if result["accepted"] != devices:
        typer.echo(f"error: only {result['accepted']} of {devices} updates were accepted: {result['errors']}", err=True)
        raise typer.Exit(1)
