"""`fedface demo`: the whole system on this machine in a few minutes."""

from __future__ import annotations

from pathlib import Path

import typer


def demo(
    data: Path = typer.Option(Path("../shared/data"), envvar="FEDFACE_DATA",
                              help="Face data root (cfp/, lfw/, protocol/)"),
    devices: int = typer.Option(1012, min=2, help="Device agents, one client identity each"),
    per_round: int = typer.Option(50, min=1),
    rounds: int = typer.Option(3, min=1, help="The bench's: more drift at its learning rate"),
    work_dir: Path = typer.Option(Path("fedface-data/demo"), help="Coordinator and device state"),
) -> None:
    """Serve the pretrained face network (imported from the face-api package, cached), enroll device agents
    on LFW photos, run FedFace rounds, and print verification before and after on the development folds."""
    from fedface_lab.demo import DemoConfig, run_demo

    if not (data / "cfp").is_dir() or not (data / "protocol" / "clients.txt").is_file():
        typer.echo(f"No face data at {data.resolve()}.\nThe demo needs the shared data folder with cfp/, "
                   "lfw/lfw-deepfunneled/ and protocol/ (see its README). Point FEDFACE_DATA (or --data) at it.",
                   err=True)
        raise typer.Exit(2)
    run_demo(DemoConfig(data=data, devices=devices, per_round=per_round, rounds=rounds, work_dir=work_dir))
