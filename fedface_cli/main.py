"""Entry point of the `fedface` command: one place that lists the subcommands."""

from __future__ import annotations

import typer

from fedface_cli import (
    admin_cmds,
    agent_cmds,
    bench_cmds,
    blob_cmds,
    demo_cmd,
    lab_cmds,
    migrate_cmd,
    model_cmds,
    privacy_cmds,
    serve_cmd,
    sim_cmds,
    use_cmds,
)

app = typer.Typer(
    name="fedface",
    help="FedFace: federated training of face recognition from one-identity devices.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

app.command("serve")(serve_cmd.serve)
app.command("pretrain")(lab_cmds.pretrain)
app.command("embed")(lab_cmds.embed)
app.command("eval")(lab_cmds.eval_cmd)
app.command("migrate")(migrate_cmd.migrate)
app.command("simulate")(sim_cmds.simulate)
app.command("demo")(demo_cmd.demo)
app.command("verify")(use_cmds.verify)
app.command("export")(use_cmds.export)
app.add_typer(admin_cmds.app, name="admin")
admin_cmds.app.command("privacy")(privacy_cmds.ledger)
admin_cmds.app.add_typer(blob_cmds.app, name="blobs")
app.add_typer(bench_cmds.app, name="bench")
app.add_typer(agent_cmds.app, name="agent")
app.add_typer(model_cmds.app, name="models")
app.add_typer(privacy_cmds.app, name="privacy")

if __name__ == "__main__":
    app()
