"""`fedface privacy ...`: what DP rounds cost, from the accountant, before running any; and
`fedface admin privacy`: what the coordinator's committed DP rounds have spent.

The calculator needs the server extra (dp-accounting); it is imported when a command runs, so the rest of
the CLI works from a device-only install."""

from __future__ import annotations

import itertools
import math
from typing import Any

import typer

from fedface_cli.admin_cmds import _client, _console, _emit, _num, _table
from fedface_common.admin_client import JSON

app = typer.Typer(help="Privacy accounting of DP rounds: epsilon for a noise multiplier, or the reverse.",
                  no_args_is_help=True)

_POPULATION = typer.Option(..., "--population", "-n", min=1, help="Enrolled devices (repeat for several)")
_PER_ROUND = typer.Option(..., "--per-round", "-m", min=1,
                          help="Devices per round: target_devices x over_selection (repeat for several)")
_ROUNDS = typer.Option(..., "--rounds", "-r", min=1, help="DP rounds (repeat for several)")
_DELTA = typer.Option(1e-5, "--delta", min=0.0, max=1.0, help="The delta epsilon is reported at")
_DIM = typer.Option(None, "--dim", min=1, help="Coordinates the devices train: adds the noise's norm on the mean")
_JSON = typer.Option(False, "--json", help="Print machine-readable JSON")


def _accountant() -> Any:
    try:
        from coordinator.privacy import accountant
    except ImportError as exc:
        raise typer.BadParameter(f"the accountant needs the server extra (pip install 'fedface[server]'): {exc}"
                                 ) from exc
    return accountant


def _row(population: int, per_round: int, rounds: int, z: float, delta: float, eps: float,
         dim: int | None) -> dict[str, Any]:
    """One regime; the noise columns say what the guarantee costs the model, in units of the clip C."""
    row: dict[str, Any] = {"population": population, "per_round": per_round,
                           "sampling_probability": min(1.0, per_round / population), "rounds": rounds,
                           "noise_multiplier": z, "delta": delta, "epsilon": eps,
                           "noise_std_on_mean_over_clip": z / per_round}
    if dim is not None:
        # The mean of clipped updates is at most C long; the noise on it has norm about z C sqrt(dim) / m.
        row["noise_norm_on_mean_over_clip"] = z * math.sqrt(dim) / per_round
    return row


def _render(rows: list[dict[str, Any]], as_json: bool, title: str) -> None:
    import json

    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    columns = [k for k in rows[0]] if rows else []
    table = _table(title, *(f"={c}" for c in columns))
    for r in rows:
        table.add_row(*(_num(r[c]) for c in columns))
    _console().print(table)


@app.command("epsilon")
def epsilon(population: list[int] = _POPULATION, per_round: list[int] = _PER_ROUND, rounds: list[int] = _ROUNDS,
            noise: list[float] = typer.Option(..., "--noise", "-z", min=0.0, help="Noise multiplier(s) z"),
            delta: float = _DELTA, dim: int | None = _DIM, as_json: bool = _JSON) -> None:
    """Epsilon after ROUNDS rounds of PER_ROUND devices sampled from POPULATION, noise multiplier z."""
    acc = _accountant()
    rows = [_row(n, m, t, z, delta, acc.epsilon_for(n, m, t, z, delta), dim)
            for n, m, t, z in itertools.product(population, per_round, rounds, noise)]
    _render(rows, as_json, "Epsilon (RDP accountant, Poisson sampling)")


@app.command("noise")
def noise(population: list[int] = _POPULATION, per_round: list[int] = _PER_ROUND, rounds: list[int] = _ROUNDS,
          target: list[float] = typer.Option(..., "--epsilon", "-e", min=0.0, help="Target epsilon(s)"),
          delta: float = _DELTA, dim: int | None = _DIM, as_json: bool = _JSON) -> None:
    """The noise multiplier z that ROUNDS rounds need to stay within a target epsilon."""
    acc = _accountant()
    rows = []
    for n, m, t, e in itertools.product(population, per_round, rounds, target):
        z = acc.noise_for_epsilon(n, m, t, e, delta)
        rows.append(_row(n, m, t, z, delta, acc.epsilon_for(n, m, t, z, delta), dim))
    _render(rows, as_json, "Noise multiplier for a target epsilon (RDP accountant, Poisson sampling)")


def ledger(ctx: typer.Context,
           delta: float | None = typer.Option(None, help="Report at this delta (default: the latest round's)")
           ) -> None:
    """Epsilon spent by the committed DP rounds, recomposed from each round's sampling rate and noise."""
    with _client(ctx) as c:
        data = c.privacy(delta)

    def render(p: JSON) -> None:
        budget = p["epsilon_budget"]
        _console().print(
            f"epsilon {_num(p['epsilon'])} at delta {_num(p['delta'])} over {p['dp_rounds']} DP rounds"
            + (f" (budget {_num(budget)})" if budget is not None else "")
            + (f"; {p['non_private_rounds']} committed rounds without DP are not covered"
               if p["non_private_rounds"] else ""))
        table = _table("DP rounds", "=round", "=q", "=z", "=clip", "=delta", "=epsilon after")
        for r in p["rounds"]:
            table.add_row(str(r["round_id"]), _num(r["sampling_probability"]), _num(r["noise_multiplier"]),
                          _num(r["clip"]), _num(r["delta"]), _num(r["epsilon"]))
        _console().print(table)

    _emit(ctx, data, render)
