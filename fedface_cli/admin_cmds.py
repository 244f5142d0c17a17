"""`fedface admin ...`: operate a coordinator through its admin API.

Every command prints a rich table, or with `--json` the server's JSON as is.
A refused request prints the server's problem code and detail on stderr and
exits 1; usage errors (bad options, no token) exit 2."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from fedface_cli.params import parse_params
from fedface_common.admin_client import JSON, AdminClient, ApiProblem
from fedface_common.wire import FINAL_ROUND_STATES, RoundState

app = typer.Typer(help="Operate a coordinator through its admin API.", no_args_is_help=True)
models_app = typer.Typer(help="Model versions: register, list, promote, roll back, download.", no_args_is_help=True)
rounds_app = typer.Typer(help="Training rounds: start, list, show, stop, cancel, wait.", no_args_is_help=True)
tokens_app = typer.Typer(help="Enrollment tokens: issue, list, revoke.", no_args_is_help=True)
devices_app = typer.Typer(help="Enrolled devices.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(rounds_app, name="rounds")
app.add_typer(tokens_app, name="tokens")
app.add_typer(devices_app, name="devices")

err = Console(stderr=True)


def _console() -> Console:
    """stdout console; piped output gets a wide fixed width instead of rich's
    80 columns, so that tables stay one row per item in logs and files."""
    probe = Console()
    return probe if probe.is_terminal or "COLUMNS" in os.environ else Console(width=200)


@dataclass
class Options:
    server: str
    token: str | None
    token_file: Path | None
    token_file_explicit: bool
    json: bool

    def resolve_token(self) -> str:
        # An explicit --token-file beats a token inherited from the environment.
        if self.token_file is not None and (self.token_file_explicit or not self.token):
            try:
                token = self.token_file.read_text().strip()
            except OSError as exc:
                raise typer.BadParameter(f"cannot read {self.token_file}: {exc}", param_hint="--token-file") from exc
            if not token:
                raise typer.BadParameter(f"{self.token_file} is empty", param_hint="--token-file")
            return token
        if self.token:
            return self.token
        raise typer.BadParameter("no admin token: pass --token or --token-file, or set FEDFACE_ADMIN_TOKEN "
                                 "(an embedded coordinator writes one to <data_dir>/admin-token)", param_hint="--token")


@app.callback()
def main(
    ctx: typer.Context,
    server: str = typer.Option("http://127.0.0.1:8000", envvar="FEDFACE_SERVER", help="Coordinator base URL"),
    token: str | None = typer.Option(None, envvar="FEDFACE_ADMIN_TOKEN", help="Admin token", show_default=False),
    token_file: Path | None = typer.Option(None, envvar="FEDFACE_ADMIN_TOKEN_FILE",
                                           help="Read the admin token from this file"),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON"),
) -> None:
    # Compared by name: typer vendors its own click, whose ParameterSource is not click's.
    explicit = getattr(ctx.get_parameter_source("token_file"), "name", None) == "COMMANDLINE"
    ctx.obj = Options(server, token, token_file, explicit, json_out)


@contextmanager
def _client(ctx: typer.Context) -> Iterator[AdminClient]:
    """The admin client, turning a refusal into a clear message and exit status 1."""
    opts: Options = ctx.find_object(Options)  # type: ignore[assignment]
    client = AdminClient(opts.server, opts.resolve_token())
    try:
        yield client
    except ApiProblem as exc:
        _print_problem(exc, opts.json)
        raise typer.Exit(1) from None
    finally:
        client.close()


def _print_problem(exc: ApiProblem, as_json: bool) -> None:
    if as_json:
        body = exc.body if isinstance(exc.body, dict) else {"status": exc.status, "code": exc.code,
                                                            "title": exc.title, "detail": exc.detail}
        typer.echo(json.dumps({"error": body}), err=True)
        return
    status = f" (HTTP {exc.status})" if exc.status else ""
    err.print(f"[bold red]error[/]: [bold]{exc.code}[/]{status}: {exc.title}", highlight=False)
    if exc.detail:
        err.print(f"  {exc.detail}", highlight=False, markup=False)


def _emit(ctx: typer.Context, data: Any, render: Callable[[Any], None]) -> None:
    opts: Options = ctx.find_object(Options)  # type: ignore[assignment]
    if opts.json:
        typer.echo(json.dumps(data, indent=2, default=str))
    else:
        render(data)


def _ts(value: Any, short: bool = False) -> str:
    """ISO timestamps to the second without the zone noise (and without the year in tables)."""
    if not value:
        return "-"
    text = str(value).replace("T", " ")[:19]
    return text[5:] if short else text


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _table(title: str, *columns: str) -> Table:
    """A table whose columns named "=x" never wrap (ids, counts, states), so
    that on a narrow terminal only the free-text columns fold."""
    table = Table(title=title, title_justify="left")
    for col in columns:
        fixed = col.startswith("=")
        table.add_column(col.lstrip("="), no_wrap=fixed, overflow="ellipsis" if fixed else "fold")
    return table


def _kv_table(title: str, rows: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for k, v in rows.items():
        table.add_row(k, json.dumps(v, default=str) if isinstance(v, dict | list) else _num(v))
    return table


# Models -------------------------------------------------------------------------------
def _metrics_summary(metrics: dict[str, Any], limit: int = 4) -> str:
    items = [f"{k}={_num(v)}" for k, v in metrics.items() if isinstance(v, int | float | str) and len(str(v)) < 24]
    return ", ".join(items[:limit]) + (" ..." if len(items) > limit else "")


def _epsilon(dp: JSON | None) -> str:
    """A DP round's epsilon (the ledger's, once it committed) at its delta; '-' without DP."""
    if not dp or dp.get("epsilon") is None:
        return "-"
    return f"{dp['epsilon']:.3g} (δ={dp['delta']:g})"


def _models_table(versions: list[JSON]) -> None:
    table = _table("Model versions (* = served; ε: privacy spent by the DP rounds up to this one)", "",
                   "=version", "=parent", "=round", "architecture", "=size", "=sha256", "=ε", "metrics", "note",
                   "=created")
    for v in versions:
        table.add_row("[bold green]*[/]" if v["served"] else "", str(v["id"]), str(v["parent_id"] or "-"),
                      str(v["round_id"] or "-"), str(v["manifest"].get("architecture", "?")),
                      f"{v['size_bytes'] / 2**20:.1f} MiB", v["sha256"][:12], _epsilon(v["metrics"].get("dp")),
                      _metrics_summary(v["metrics"]) or "-", v["note"] or "", _ts(v["created_at"], short=True))
    _console().print(table)


def _one_model(title: str) -> Callable[[Any], None]:
    def render(v: JSON) -> None:
        _console().print(_kv_table(title, {"version": v["id"], "parent": v["parent_id"], "round": v["round_id"],
                                    "served": v["served"], "sha256": v["sha256"], "size_bytes": v["size_bytes"],
                                    "class centres": v["has_class_centres"], "manifest": v["manifest"],
                                    "metrics": v["metrics"], "note": v["note"], "created": _ts(v["created_at"])}))
    return render


@models_app.command("register")
def models_register(ctx: typer.Context, file: Path = typer.Argument(..., exists=True, dir_okay=False),
                    note: str | None = typer.Option(None, help="Free-form note"),
                    serve: bool = typer.Option(False, help="Serve it at once")) -> None:
    """Upload a safetensors model file (its metadata must carry the fedface.manifest).

    A file from `fedface pretrain` is split first: the weights are registered without the `pretrain.` extras,
    and its class centres are attached to the new version (fedface-private ships them to devices)."""
    import tempfile

    from fedface_common.face.publish import has_extras, split_pretrained

    with _client(ctx) as c, tempfile.TemporaryDirectory() as tmp:
        centres = None
        if has_extras(file):
            file, centres = split_pretrained(file, Path(tmp))
        version = c.register_model(file, note, serve)
        if centres is not None:
            version = c.attach_centres(int(version["id"]), centres)
        _emit(ctx, version, _one_model("Registered model version"))


@models_app.command("attach-centres")
def models_attach_centres(ctx: typer.Context, version: int,
                          file: Path = typer.Argument(..., exists=True, dir_okay=False)) -> None:
    """Attach public class centres (one F32 tensor 'class_centres' [C, dim]) to a version."""
    with _client(ctx) as c:
        _emit(ctx, c.attach_centres(version, file), _one_model(f"Class centres attached to version {version}"))


@models_app.command("list")
def models_list(ctx: typer.Context) -> None:
    """All versions with their lineage (parent, round), metrics and the served one."""
    with _client(ctx) as c:
        _emit(ctx, c.list_models(), _models_table)


@models_app.command("promote")
def models_promote(ctx: typer.Context, version: int) -> None:
    """Serve this version to devices from now on."""
    with _client(ctx) as c:
        _emit(ctx, c.promote(version), _one_model(f"Now serving version {version}"))


@models_app.command("rollback")
def models_rollback(ctx: typer.Context) -> None:
    """Serve the parent of the served version."""
    with _client(ctx) as c:
        _emit(ctx, c.rollback(), _one_model("Rolled back; now serving"))


@models_app.command("download")
def models_download(ctx: typer.Context, version: int,
                    out_file: Path = typer.Option(..., "--out", dir_okay=False, help="Where to write the weights")
                    ) -> None:
    """Download a version's safetensors file."""
    with _client(ctx) as c:
        size = c.download_model(version, out_file)
    _emit(ctx, {"version": version, "path": str(out_file), "size_bytes": size},
          lambda d: _console().print(f"wrote version {version} to {out_file} ({size} bytes)"))


# Rounds -------------------------------------------------------------------------------
class Optimizer(StrEnum):
    sgd = "sgd"
    adam = "adam"


def _rounds_table(rounds: list[JSON]) -> None:
    table = _table("Rounds (sel/sub/acc/rej = selected, submitted, accepted, rejected devices)", "=id", "=state",
                   "algorithm", "=base", "=result", "=sel", "=sub", "=acc", "=rej", "=created", "reason")
    for r in rounds:
        table.add_row(str(r["id"]), _state(r["state"]), r["algorithm"], str(r["base_version_id"]),
                      str(r["result_version_id"] or "-"), str(r["selected"]), str(r["submitted"]),
                      str(r["accepted"]), str(r["rejected"]), _ts(r["created_at"], short=True),
                      r["failure_reason"] or "")
    _console().print(table)


def _state(state: str) -> str:
    colour = {"committed": "green", "failed": "red", "cancelled": "yellow", "collecting": "cyan"}.get(state, "white")
    return f"[{colour}]{state}[/]"


def _show_round(r: JSON) -> None:
    _console().print(_kv_table(f"Round {r['id']}", {
        "state": r["state"], "algorithm": r["algorithm"], "base version": r["base_version_id"],
        "result version": r["result_version_id"], "selected": r["selected"], "submitted": r["submitted"],
        "accepted": r["accepted"], "rejected": r["rejected"], "created": _ts(r["created_at"]),
        "deadline": _ts(r["deadline_at"]), "closed": _ts(r["closed_at"]), "finished": _ts(r["finished_at"]),
        "failure reason": r["failure_reason"], "continuous remaining": r["continuous_remaining"],
        "config": r["config"], "metrics": r["metrics"],
        **({"ε (once committed)": _epsilon(r["privacy"]), "privacy": r["privacy"]} if r.get("privacy") else {}),
    }))


@rounds_app.command("start")
def rounds_start(
    ctx: typer.Context,
    algorithm: str | None = typer.Option(None, help="fedface, fedavg, fedface-private, fedavg-plain"),
    target: int | None = typer.Option(None, help="Target number of updates"),
    min_devices: int | None = typer.Option(None, "--min", help="Quorum: fewer accepted updates fail the round"),
    over_selection: float | None = typer.Option(None, help="Select up to target x this many devices"),
    deadline: float | None = typer.Option(None, help="Seconds until collection closes"),
    epochs: int | None = typer.Option(None, help="Local epochs"),
    batch_size: int | None = typer.Option(None, help="Local batch size"),
    lr: float | None = typer.Option(None, help="Local learning rate"),
    optimizer: Optimizer | None = typer.Option(None, help="Local optimizer"),
    momentum: float | None = typer.Option(None, help="SGD momentum"),
    weight_decay: float | None = typer.Option(None, help="Weight decay"),
    param: list[str] = typer.Option([], help="Algorithm parameter key=value (value parsed as JSON when it can be)"),
    continuous: int | None = typer.Option(None, help="Start this many more rounds after this one"),
) -> None:
    """Start a round on the served model. Options left out take the server's defaults."""
    fields = {"algorithm": algorithm, "target_devices": target, "min_devices": min_devices,
              "over_selection": over_selection, "deadline_s": deadline, "local_epochs": epochs,
              "batch_size": batch_size, "learning_rate": lr,
              "optimizer": optimizer.value if optimizer else None, "momentum": momentum,
              "weight_decay": weight_decay, "continuous_rounds": continuous}
    config: dict[str, Any] = {k: v for k, v in fields.items() if v is not None}
    if param:
        config["params"] = parse_params(param)
    with _client(ctx) as c:
        _emit(ctx, c.start_round(config), _show_round)


@rounds_app.command("list")
def rounds_list(ctx: typer.Context, limit: int = typer.Option(100, min=1, max=1000)) -> None:
    """Recent rounds with live selected/submitted/accepted/rejected counts."""
    with _client(ctx) as c:
        _emit(ctx, c.list_rounds(limit), _rounds_table)


@rounds_app.command("show")
def rounds_show(ctx: typer.Context, round_id: int) -> None:
    """One round: state, counts, config and metrics."""
    with _client(ctx) as c:
        _emit(ctx, c.get_round(round_id), _show_round)


@rounds_app.command("stop")
def rounds_stop(ctx: typer.Context, round_id: int) -> None:
    """Close collection now: aggregate if the quorum is met, else the round fails."""
    with _client(ctx) as c:
        _emit(ctx, c.stop_round(round_id), _show_round)


@rounds_app.command("cancel")
def rounds_cancel(ctx: typer.Context, round_id: int) -> None:
    """Abandon a collecting round without aggregating."""
    with _client(ctx) as c:
        _emit(ctx, c.cancel_round(round_id), _show_round)


@rounds_app.command("wait")
def rounds_wait(ctx: typer.Context, round_id: int,
                timeout: float = typer.Option(3600.0, help="Give up after this many seconds"),
                interval: float = typer.Option(1.0, min=0.05, help="Seconds between polls")) -> None:
    """Poll until the round is committed, failed or cancelled. Exit 0 only when it committed."""
    end = time.monotonic() + timeout
    r: JSON | None = None
    with _client(ctx) as c, err.status(f"round {round_id}: waiting") as status:
        while True:
            try:
                r = c.get_round(round_id)
            except ApiProblem as exc:
                # A coordinator restarting mid-wait is not the round's failure: keep polling.
                if exc.status is not None and exc.status < 500:
                    raise
                r = None
                status.update(f"round {round_id}: coordinator unreachable ({exc.code}), retrying")
            if r is not None:
                if r["state"] in FINAL_ROUND_STATES:
                    break
                target = r["config"].get("target_devices", "?")
                status.update(f"round {round_id}: [bold]{r['state']}[/], accepted {r['accepted']}/{target}, "
                              f"selected {r['selected']}, rejected {r['rejected']}")
            if time.monotonic() >= end:
                err.print(f"[bold red]error[/]: timed out after {timeout:g}s waiting for round {round_id}")
                raise typer.Exit(1)
            time.sleep(interval)
    assert r is not None
    _emit(ctx, r, _show_round)
    if r["state"] != RoundState.COMMITTED:
        raise typer.Exit(1)


# Enrollment tokens, devices, audit ---------------------------------------------------------
@tokens_app.command("issue")
def tokens_issue(ctx: typer.Context, uses: int = typer.Option(1, min=1, help="How many devices may enroll with it"),
                 ttl: float = typer.Option(24 * 3600, min=1, help="Seconds until it expires"),
                 note: str | None = typer.Option(None, help="Free-form note")) -> None:
    """Issue an enrollment token (shown once; only its hash is kept)."""
    with _client(ctx) as c:
        _emit(ctx, c.issue_token(uses, ttl, note), lambda t: _console().print(_kv_table(
            "Enrollment token (shown once)", {"token": t["token"], "id": t["id"], "max uses": t["max_uses"],
                                               "expires": _ts(t["expires_at"])})))


def _tokens_table(tokens: list[JSON]) -> None:
    table = _table(f"Enrollment tokens ({len(tokens)})", "=id", "note", "=used", "=expires", "=created", "status")
    for t in tokens:
        status = ("[red]revoked[/]" if t["revoked_at"] else "used up" if t["uses"] >= t["max_uses"]
                  else "expired" if datetime.fromisoformat(t["expires_at"]) <= datetime.now(UTC) else "open")
        table.add_row(t["id"], t["note"] or "", f"{t['uses']} / {t['max_uses']}", _ts(t["expires_at"]),
                      _ts(t["created_at"]), status)
    _console().print(table)


@tokens_app.command("list")
def tokens_list(ctx: typer.Context, limit: int = typer.Option(100, min=1, max=1000, help="Newest tokens")) -> None:
    """Issued enrollment tokens, newest first (never the tokens themselves)."""
    with _client(ctx) as c:
        _emit(ctx, c.list_tokens(limit), _tokens_table)


@tokens_app.command("revoke")
def tokens_revoke(ctx: typer.Context, token_id: str) -> None:
    """Revoke an enrollment token: no further device enrolls with it (enrolled ones keep their credentials)."""
    with _client(ctx) as c:
        _emit(ctx, c.revoke_token(token_id), lambda t: _tokens_table([t]))


def _devices_table(devices: list[JSON]) -> None:
    table = _table(f"Devices ({len(devices)})", "=id", "label", "=enrolled", "=last seen", "=revoked")
    for d in devices:
        table.add_row(d["id"], d["label"] or "", _ts(d["created_at"]), _ts(d["last_seen_at"]),
                      f"[red]{_ts(d['revoked_at'])}[/]" if d["revoked_at"] else "")
    _console().print(table)


@devices_app.command("list")
def devices_list(ctx: typer.Context, active_only: bool = typer.Option(False, help="Leave out revoked devices")
                 ) -> None:
    """Enrolled devices."""
    with _client(ctx) as c:
        _emit(ctx, c.list_devices(include_revoked=not active_only), _devices_table)


@devices_app.command("revoke")
def devices_revoke(ctx: typer.Context, device_id: str) -> None:
    """Revoke a device's credential; its later calls are refused."""
    with _client(ctx) as c:
        _emit(ctx, c.revoke_device(device_id), lambda d: _devices_table([d]))


@app.command("audit")
def audit(ctx: typer.Context, limit: int = typer.Option(50, min=1, max=5000, help="Most recent entries")) -> None:
    """The audit log of admin actions, newest first."""
    with _client(ctx) as c:
        entries = c.audit(limit)

    def render(rows: list[JSON]) -> None:
        table = _table("Audit log", "=id", "=at", "actor", "action", "target", "details")
        for e in rows:
            table.add_row(str(e["id"]), _ts(e["at"]), e["actor"], e["action"], e["target"] or "",
                          json.dumps(e["details"], default=str))
        _console().print(table)

    _emit(ctx, entries, render)
