"""`fedface admin blobs gc` against a real coordinator process: a dry run lists what a pass would
remove and changes nothing; the pass itself removes only unreferenced old blobs."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

from typer.testing import CliRunner

from fedface_cli.main import app
from storage.blobs import LocalBlobStore
from storage.db import utcnow
from tests.cli.fixtures import serve_coordinator, tiny_model_bytes
from tests.support.blob_age import backdate

OLD = timedelta(hours=3)
runner = CliRunner()


def _old_blob(store: LocalBlobStore, data: bytes) -> str:
    key = asyncio.run(store.put_bytes(data))
    backdate(store, key, utcnow() - OLD)
    return key


def test_cli_dry_run_changes_nothing(tmp_path: Path) -> None:
    with serve_coordinator(tmp_path / "coordinator") as served:
        store = LocalBlobStore(served.data_dir / "blobs")
        model = tmp_path / "tiny.safetensors"
        model.write_bytes(tiny_model_bytes())

        def admin(*args: str) -> str:
            result = runner.invoke(app, ["admin", "--server", served.url, "--token", served.token, *args],
                                   env={"COLUMNS": "200"})
            assert result.exit_code == 0, result.stdout + result.stderr
            return result.stdout

        version = json.loads(admin("--json", "models", "register", str(model), "--serve"))
        backdate(store, version["sha256"], utcnow() - OLD)
        garbage = _old_blob(store, b"a superseded partial sum")
        listed = sorted(p.name for p in store.root.rglob("*") if p.is_file())

        report = json.loads(admin("--json", "blobs", "gc", "--dry-run"))
        assert report["dry_run"] is True and [o["key"] for o in report["blobs_removed"]] == [garbage]
        assert report["blobs_referenced"] == 1
        table = admin("blobs", "gc", "--dry-run")
        assert "dry run: nothing removed" in table and garbage in table
        assert sorted(p.name for p in store.root.rglob("*") if p.is_file()) == listed

        assert garbage in admin("blobs", "gc")
        assert not store.path_of(garbage).exists() and store.path_of(version["sha256"]).is_file()
