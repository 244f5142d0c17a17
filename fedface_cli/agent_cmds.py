"""`fedface agent ...`: run the device agent against a coordinator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from device_agent.runner import RoundReport

app = typer.Typer(help="The device agent: train on this device's photos and send updates.", no_args_is_help=True)


def _print_reports(reports: list[RoundReport], as_json: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in reports], indent=2, default=str))
        return
    console = Console()
    for r in reports:
        table = Table(title=f"{r.status.value}: {r.message}", show_header=False)
        table.add_column("what")
        table.add_column("value")
        rows: list[tuple[str, Any]] = [("round", r.round_id), ("model version", r.model_version),
                                       ("algorithm", r.algorithm), ("update id", r.update_id), ("code", r.code)]
        rows += [(f"photos {k}", v) for k, v in r.photos.items()]
        for key in ("loss_before", "loss_after", "train_seconds", "num_samples", "cos_mean_feature_wc"):
            if key in r.metrics:
                value = r.metrics[key]
                rows.append((key.replace("_", " "), f"{value:.4f}" if isinstance(value, float) else value))
        rows += [("bytes sent", r.bytes_sent), ("bytes received", r.bytes_received), ("seconds", r.seconds)]
        for name, value in rows:
            if value is not None:
                table.add_row(name, str(value))
        console.print(table)
        skipped = [e for e in r.photo_entries if not e["used"]]
        if skipped:
            detail = Table("skipped photo", "reason", "detail", title="skipped photos")
            for e in skipped:
                detail.add_row(e["name"], str(e["reason"]), e["detail"])
            console.print(detail)


@app.command("run")
def run(
    server: str = typer.Option(..., help="Coordinator URL, e.g. https://fedface.example.org"),
    photos: Path = typer.Option(..., exists=True, file_okay=False, help="Folder of photos of this device's owner"),
    enroll_token: str | None = typer.Option(None, envvar="FEDFACE_ENROLL_TOKEN",
                                            help="Enrollment token (first run only; the credential is stored)"),
    label: str | None = typer.Option(None, help="Device name shown to the operator at enrollment"),
    state_dir: Path | None = typer.Option(None, help="State folder [default: ~/.fedface-agent/<host>-<port>]"),
    once: bool = typer.Option(False, help="Do one round (the first task received), then exit"),
    max_wait: float | None = typer.Option(None, help="Give up after waiting this many seconds for a task "
                                          "(0: exit at the first 'wait')"),
    report: bool = typer.Option(False, help="Print what each round did"),
    as_json: bool = typer.Option(False, "--json", help="Print the reports as JSON (implies --report)"),
    aligned: bool = typer.Option(False, help="Photos are pre-aligned (LFW deep-funneled) = --input-mode aligned"),
    input_mode: str = typer.Option("detect", help="detect (MTCNN) or aligned"),
    device: str = typer.Option("auto", help="auto, cpu, cuda or mps"),
    seed: int | None = typer.Option(None, help="Seed of local shuffling and augmentation"),
) -> None:
    """Enroll (once), then check in, train on the photos and submit, round after round."""
    from device_agent.algorithms import pick_device
    from device_agent.client import ApiError, DeviceClient, NetworkError
    from device_agent.photos.pipeline import FacePipeline
    from device_agent.runner import Agent, AgentError, FolderPhotos, Outcome, rich_progress
    from device_agent.state import AgentState, default_state_dir

    mode = "aligned" if aligned else input_mode
    if mode not in ("detect", "aligned"):
        raise typer.BadParameter("--input-mode must be detect or aligned")
    pipeline = FacePipeline(112, "aligned" if mode == "aligned" else "detect")
    state = AgentState(state_dir or default_state_dir(server))
    reports: list[RoundReport] = []
    with DeviceClient(server) as client:
        agent = Agent(client, state, FolderPhotos(photos, pipeline), enroll_token=enroll_token, label=label,
                      device=pick_device(device), progress=None if as_json else rich_progress, seed=seed)

        def show(r: RoundReport) -> None:
            reports.append(r)
            if (report or as_json) and not once:
                _print_reports([r], as_json)
            elif not as_json:
                typer.echo(f"{r.status.value}: {r.message}", err=True)

        try:
            agent.run(once=once, max_wait_s=max_wait, on_report=show)
        except AgentError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        except (NetworkError, ApiError) as exc:
            typer.echo(f"error: the server is unavailable: {exc}", err=True)
            raise typer.Exit(1) from exc
    if (report or as_json) and once:
        _print_reports(reports, as_json)
    if reports and reports[-1].status == Outcome.WAIT:
        raise typer.Exit(3)  # gave up waiting for a task (--max-wait): distinguishable in scripts
