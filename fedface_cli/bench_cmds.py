"""`fedface bench ...`: benchmarks of the coordinator (ingest here; others add
their own commands to this sub-app)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Benchmarks: the coordinator, the FedFace experiment, a device's training cost.",
                  no_args_is_help=True)

# The figures worth a glance in the terminal; the JSON file holds everything.
_SUMMARY = ("backend", "accepted", "updates_per_s", "mb_per_s", "p50_ms", "p99_ms", "echo_updates_per_s",
            "ratio_to_echo", "server_peak_rss_intake_mb", "server_peak_rss_aggregation_mb", "server_peak_rss_mb",
            "aggregate_s")


def _server_env(items: list[str]) -> tuple[tuple[str, str], ...]:
    """--server-env FEDFACE_NAME=value items as (name, value) pairs."""
    pairs = [item.partition("=") for item in items]
    if any(not sep or not key.startswith("FEDFACE_") for key, sep, _ in pairs):
        raise typer.BadParameter("expected FEDFACE_NAME=value", param_hint="--server-env")
    return tuple((k, v) for k, _, v in pairs)


@app.command("ingest")
def ingest(
    devices: int = typer.Option(100, min=1, help="Devices that enroll and each submit one update"),
    params: int = typer.Option(1_000_000, min=1, help="Model size in F32 parameters"),
    concurrency: int = typer.Option(32, min=1, help="Concurrent HTTP/1.1 connections"),
    bodies: int = typer.Option(8, min=1, help="Distinct update bodies to pre-generate (client memory)"),
    out: Path = typer.Option(..., dir_okay=False, help="Where to write the JSON result"),
    progress: bool = typer.Option(True, help="Show progress bars"),
    profile_server: Path | None = typer.Option(None, file_okay=False,
                                               help="Profile the coordinator into DIR/coordinator.prof"),
    server_env: list[str] = typer.Option([], help="Extra coordinator setting, e.g. FEDFACE_TICK_INTERVAL_S=2"),
) -> None:
    """Update intake throughput, latency and server memory, against a bare ASGI echo baseline.

    Uses Postgres and Redis when FEDFACE_DATABASE_URL and FEDFACE_REDIS_URL are set (in a fresh database
    and key prefix, removed afterwards), else an embedded coordinator in a temp dir."""
    from fedface_lab.bench_ingest import IngestConfig, run_ingest
    from fedface_lab.progress import make_progress

    cfg = IngestConfig(devices=devices, params=params, concurrency=concurrency, distinct_bodies=bodies,
                       profile_dir=profile_server, server_env=_server_env(server_env))
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


@app.command("fedface")
def fedface(
    out: Path = typer.Option(Path("fedface-data/fedface-results.json"), dir_okay=False,
                             help="JSON results (the table and plot go beside it); the committed tables in"
                             " docs/results/ are written only when --out names them"),
    quick: bool = typer.Option(False, "--quick", help="1 seed, no int8 or attacker rows, the centralized run on 300"
                                                           " identities"),
    privacy: bool = typer.Option(False, "--privacy", help="fedface-private alone, with secure aggregation, with"
                                 " central DP at epsilon 1, 4 and 8 and with distributed DP at 8 (seed 0)"),
    start: str = typer.Option("face-api", help="face-api: dlib's ResNet imported from the pinned npm package; "
                                               "pretrain: a MobileFaceNet pretrained on CFP (cached)"),
    data: Path = typer.Option(Path("../shared/data"), envvar="FEDFACE_DATA", help="Face data root"),
    work_dir: Path = typer.Option(Path("fedface-data/bench-fedface"), help="Coordinator and device state"),
    rounds: int | None = typer.Option(None, min=1, help="Override the plan's rounds"),
    per_round: int | None = typer.Option(None, min=1, help="Override the plan's devices per round"),
    devices: int | None = typer.Option(None, min=2, help="Override the plan's device population"),
    seeds: int | None = typer.Option(None, min=1, help="Override the number of seeds"),
) -> None:
    """FedFace vs FedAvg vs fedface-private vs centralized fine-tuning, on the development folds."""
    from fedface_lab.bench_fedface import ExperimentPlan, run_experiment, with_overrides
    from fedface_lab.bench_report import write_report

    if not (data / "protocol" / "clients.txt").is_file():
        raise typer.BadParameter(f"no face data at {data}: set FEDFACE_DATA or --data")
    if start not in ("face-api", "pretrain"):
        raise typer.BadParameter("--start must be face-api or pretrain")
    if privacy and (quick or start != "face-api"):
        raise typer.BadParameter("--privacy is its own plan, from dlib's network: without --quick or --start")
    if privacy:
        plan = ExperimentPlan.privacy(data)
    elif start == "face-api":
        plan = ExperimentPlan.quick(data) if quick else ExperimentPlan.full(data)
    else:
        plan = ExperimentPlan.quick_pretrained(data) if quick else ExperimentPlan.full_pretrained(data)
    plan = with_overrides(plan, rounds=rounds, per_round=per_round, devices=devices,
                          seeds=tuple(range(seeds)) if seeds else None)
    console = Console(stderr=True)
    result = run_experiment(plan, data, work_dir, log=console.print)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    md = write_report(result, out.with_suffix(".md"), out.with_suffix(".png"))
    Console().print(md)
    typer.echo(f"wrote {out}, {out.with_suffix('.md')} and {out.with_suffix('.png')}")


@app.command("train-cost")
def train_cost_cmd(
    out: Path = typer.Option(..., dir_okay=False, help="Where to write the JSON result"),
    model: Path | None = typer.Option(None, help="Model file (default: dlib's network from the model cache)"),
    batch: int = typer.Option(16, min=1),
    threads: int = typer.Option(1, min=1, help="CPU threads (1: one phone core)"),
    device: str = typer.Option("cpu", help="cpu, cuda, mps or auto"),
) -> None:
    """A device's cost per photo of a local training step, for each choice of what it trains."""
    from fedface_lab.bench_fedface import RESNET_FROZEN
    from fedface_lab.bench_train_cost import train_cost
    from fedface_lab.model_cache import cached_face_api_model

    path = model or cached_face_api_model()[0]
    choices = {"all layers": [], "last 4 blocks + fc (bench default)": list(RESNET_FROZEN),
               "fc only": ["stem.", "blocks."]}
    result = train_cost(path, choices, batch=batch, threads=threads, device=device)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    table = Table(title=f"{result['architecture']}, batch {batch}, {threads} thread(s), {result['device']}")
    for column in ("what is trained", "parameters trained", "ms per photo", "x forward"):
        table.add_column(column)
    for name, row in result["rows"].items():
        table.add_row(name, str(row.get("trained_parameters", "-")), f"{1000 * row['s_per_photo']:.1f}",
                      f"{row['ratio_to_forward']:.2f}")
    Console().print(table)
    typer.echo(f"wrote {out}")


def _latency_of(endpoint: str) -> Callable[[dict[str, Any]], object]:
    return lambda r: f"{r['latency_ms'][endpoint]['p50']} / {r['latency_ms'][endpoint]['p99']}"


@app.command("fleet")
def fleet(
    devices: int = typer.Option(1000, min=2, help="Simulated devices (no training; each submits a random delta)"),
    replicas: str = typer.Option("1,2", help="Comma-separated replica counts to run, e.g. 1,2,4"),
    rounds: int = typer.Option(5, min=1, help="Rounds per replica count"),
    params: int = typer.Option(1_000_000, min=1, help="Model size in F32 parameters"),
    concurrency: int = typer.Option(64, min=1, help="HTTP requests in flight at most"),
    bodies: int = typer.Option(4, min=1, help="Distinct update bodies to pre-generate (client memory)"),
    kill_round: int = typer.Option(3, min=1, help="Round in which one replica is SIGKILLed (when replicas >= 2)"),
    out: Path = typer.Option(..., dir_okay=False, help="Where to write the JSON result"),
    progress: bool = typer.Option(True, help="Show progress bars"),
    server_env: list[str] = typer.Option([], help="Extra coordinator setting, e.g. FEDFACE_LEASE_TTL_S=2"),
) -> None:
    """Check-in, download and submit rates, latencies, close-to-commit and replica memory, with failover.

    Several replicas need FEDFACE_DATABASE_URL and FEDFACE_REDIS_URL (a fresh database and key prefix per
    replica count, removed afterwards): embedded SQLite cannot be shared between processes."""
    from fedface_lab.bench_fleet import FleetConfig, run_fleet
    from fedface_lab.progress import make_progress

    try:
        counts = tuple(int(x) for x in replicas.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter("expected comma-separated integers", param_hint="--replicas") from None
    if not counts or min(counts) < 1:
        raise typer.BadParameter("expected positive replica counts", param_hint="--replicas")
    if max(counts) > 1 and not (os.environ.get("FEDFACE_DATABASE_URL") and os.environ.get("FEDFACE_REDIS_URL")):
        raise typer.BadParameter("several replicas cannot share embedded SQLite: set FEDFACE_DATABASE_URL and "
                                 "FEDFACE_REDIS_URL (a fresh database and key prefix are made from them)",
                                 param_hint="--replicas")
    cfg = FleetConfig(devices=devices, replicas=counts, rounds=rounds, params=params, concurrency=concurrency,
                      distinct_bodies=bodies, kill_round=kill_round, server_env=_server_env(server_env))
    with make_progress(progress) as bar:
        result = run_fleet(cfg, bar)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    table = Table(title=f"fleet: {devices} devices x {params} params, {rounds} rounds, concurrency {concurrency}",
                  title_justify="left")
    table.add_column("replicas")
    for r in result["results"]:
        table.add_column(str(r["replicas"]))
    # One row per figure, one column per replica count: stays readable in a narrow terminal.
    rows: dict[str, Callable[[dict[str, Any]], object]] = {
        "check-ins/s": lambda r: r["checkins_per_s"], "downloads/s": lambda r: r["downloads_per_s"],
        "submissions/s": lambda r: r["submissions_per_s"],
        **{f"{e} p50/p99 ms": _latency_of(e) for e in ("check_in", "download", "submit")},
        "errors (unretried)": lambda r: r["errors"], "failed over": lambda r: r["failed_over_requests"],
        "failed on killed": lambda r: r["failed_on_killed_replica"],
        "transport errors retried": lambda r: r["retried_transport_errors"],
        "close-to-commit s": lambda r: r["close_to_commit_s"],
        "rounds committed": lambda r: f"{r['rounds_committed']}/{rounds}",
        "peak RSS MB": lambda r: r["peak_rss_mb"], "wall s": lambda r: r["wall_s"],
    }
    for label, get in rows.items():
        table.add_row(label, *(str(get(r)) for r in result["results"]))
    Console().print(table)
    typer.echo(f"wrote {out}")
    bad = [r["replicas"] for r in result["results"] if r["errors"] or r["rounds_committed"] != rounds]
    if bad:
        typer.echo(f"error: unretried errors or uncommitted rounds with replicas {bad}", err=True)
        raise typer.Exit(1)


_SECAGG_SUMMARY = ("devices", "params", "dropout", "survivors", "neighbours", "threshold", "graph",
                   "client_extra_s_per_device", "server_extra_s", "plain_round_s", "ratio_to_plain",
                   "bytes_extra_per_device", "max_abs_error", "error_bound")


@app.command("secagg")
def secagg(
    devices: int = typer.Option(100, min=3, help="Devices in the secure round"),
    params: int = typer.Option(1_000_000, min=1, help="Update size in parameters"),
    dropout: float = typer.Option(0.1, min=0.0, max=0.49, help="Fraction dropping after sharing keys"),
    repeats: int = typer.Option(1, min=1, help="Runs per timed step (the least is kept)"),
    seed: int = typer.Option(0),
    out: Path = typer.Option(..., dir_okay=False, help="Where to write the JSON result"),
    progress: bool = typer.Option(True, help="Show progress bars"),
) -> None:
    """Secure aggregation (SecAgg+) against a plain round of the same updates: a device's extra time and
    bytes, the server's extra time, and the fixed-point error of the mean (fedface_lab/bench_secagg.py)."""
    from fedface_lab.bench_secagg import run_bench
    from fedface_lab.progress import make_progress

    with make_progress(progress) as bar:
        task = bar.add_task(f"secagg {devices} x {params}", total=devices + 1)
        result = run_bench(devices, params, dropout, repeats, seed, lambda _: bar.advance(task))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    table = Table(title=f"secagg: {devices} devices x {params} params, dropout {dropout}", show_header=False,
                  title_justify="left")
    for key in _SECAGG_SUMMARY:
        table.add_row(key, str(result[key]))
    Console().print(table)
    typer.echo(f"wrote {out}")
