"""`fedface admin blobs ...`: the coordinator's blob store."""

from __future__ import annotations

import typer

from fedface_cli.admin_cmds import _client, _console, _emit, _kv_table, _table
from fedface_common.admin_client import JSON

app = typer.Typer(help="The blob store: collect what no model version, round or update needs.",
                  no_args_is_help=True)


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def _age(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def _report(r: JSON) -> None:
    verb = "would remove" if r["dry_run"] else "removed"
    console = _console()
    console.print(_kv_table("Blob collection (dry run: nothing removed)" if r["dry_run"] else "Blob collection", {
        "blobs scanned": r["blobs_scanned"], f"blobs {verb}": len(r["blobs_removed"]),
        f"staging files {verb}": len(r["staging_removed"]), f"bytes {verb}": _mib(r["bytes_removed"]),
        "kept: referenced": r["blobs_referenced"], "kept: younger than the grace period": r["blobs_young"],
        "kept: committed again since listed": r["blobs_recommitted"],
        "grace period": _age(r["grace_s"]), "update retention": _age(r["update_retention_s"]),
    }))
    rows = [("blob", o) for o in r["blobs_removed"]] + [("staging", o) for o in r["staging_removed"]]
    if rows:
        table = _table(f"{verb.capitalize()} ({len(rows)})", "=kind", "=key", "=size", "=age")
        for kind, o in rows:
            table.add_row(kind, o["key"], _mib(o["size_bytes"]), _age(o["age_s"]))
        console.print(table)


@app.command("gc")
def blobs_gc(ctx: typer.Context,
             dry_run: bool = typer.Option(False, "--dry-run", help="Report what would be removed; remove nothing")
             ) -> None:
    """Remove blobs no row references that are older than the grace period, and staging files that no
    upload owns (the coordinator also does this on a schedule)."""
    with _client(ctx) as c:
        _emit(ctx, c.gc_blobs(dry_run), _report)
