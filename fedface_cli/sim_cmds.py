"""`fedface simulate`: the coordinator and virtual devices on this machine."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from fedface_cli.params import parse_params


def simulate(
    model: Path = typer.Option(..., help="Pretrained model file (from `fedface pretrain`)"),
    data: Path = typer.Option(Path("../shared/data"), envvar="FEDFACE_DATA", help="Face data root"),
    algorithm: str = typer.Option("fedface", help="fedface | fedavg | fedface-private"),
    devices: int = typer.Option(50, min=1, help="Virtual devices (client identities) enrolled"),
    per_round: int = typer.Option(10, min=1, help="Devices per round"),
    rounds: int = typer.Option(5, min=1),
    concurrency: int = typer.Option(2, min=1, help="Devices training at the same time"),
    epochs: int = typer.Option(1, min=1, help="Local epochs"),
    batch_size: int = typer.Option(32, min=1),
    lr: float = typer.Option(0.01, min=0),
    optimizer: str = typer.Option("sgd"),
    param: list[str] = typer.Option([], help="Algorithm parameter key=value (repeatable)"),
    eval_every: int = typer.Option(0, min=0, help="Evaluate on the dev pairs every k rounds (0: at the end only)"),
    seed: int = typer.Option(0),
    enrollment_round: bool = typer.Option(
        False, help="First a round of every device without training: each sends its class embedding"),
    work_dir: Path = typer.Option(Path("fedface-data/simulation"), help="Coordinator and device state"),
    out: Path | None = typer.Option(None, help="Write the per-round JSON here"),
) -> None:
    """Run federated rounds of virtual devices, each holding one LFW client identity's photos."""
    from rich.console import Console
    from rich.progress import Progress

    from fedface_lab.dev_eval import DevEvaluator
    from fedface_lab.simulate import RoundRecord, SimulationConfig, run_simulation

    if not (data / "protocol" / "clients.txt").is_file():
        raise typer.BadParameter(f"no face data at {data}: set FEDFACE_DATA or --data to the shared data folder")
    cfg = SimulationConfig(model=model, data_root=data, work_dir=work_dir, algorithm=algorithm, devices=devices,
                           per_round=per_round, rounds=rounds, concurrency=concurrency, local_epochs=epochs,
                           batch_size=batch_size, learning_rate=lr, optimizer=optimizer, params=parse_params(param),
                           eval_every=eval_every, seed=seed, enrollment_round=enrollment_round)
    console = Console(stderr=True)
    with Progress(console=console) as progress:
        enrolling = progress.add_task("enrolling devices", total=devices)
        training = progress.add_task(f"{algorithm} rounds", total=rounds + int(enrollment_round))

        def on_round(r: RoundRecord) -> None:
            progress.advance(training)
            m = r.server_metrics
            acc = f" acc {r.eval['accuracy']:.4f}" if r.eval else ""
            cos = m.get("w_mean_offdiag_cos")
            progress.console.print(
                f"round {r.round}: {r.submitted}/{r.participants} devices, loss "
                f"{r.mean_loss_before or 0:.4f} -> {r.mean_loss_after or 0:.4f}, "
                f"W cos {cos if cos is None else round(cos, 4)}{acc}, {r.seconds:.1f} s")

        result = run_simulation(cfg, DevEvaluator(data, rounds), on_round=on_round,
                                on_enroll=lambda n: progress.advance(enrolling, n))
    text = json.dumps(result, indent=2, default=str)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    typer.echo(text)
