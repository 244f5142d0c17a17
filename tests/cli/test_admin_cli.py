"""`fedface admin` against a real coordinator process (embedded mode): the
operator's whole loop, from registering a model to revoking a device."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from fedface_cli.main import app
from tests.cli.fixtures import ServedCoordinator, serve_coordinator, tiny_model_bytes

runner = CliRunner()


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedCoordinator]:
    with serve_coordinator(tmp_path_factory.mktemp("coordinator")) as served:
        yield served


def admin(served: ServedCoordinator, *args: str, token: str | None = None, as_json: bool = True) -> Result:
    base = ["admin", "--server", served.url, "--token", token or served.token]
    return runner.invoke(app, [*base, *(["--json"] if as_json else []), *args], env={"COLUMNS": "200"})


def ok_json(result: Result) -> Any:
    assert result.exit_code == 0, f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return json.loads(result.stdout)


def test_operator_loop(coordinator: ServedCoordinator, tmp_path: Path) -> None:
    model = tmp_path / "tiny.safetensors"
    model.write_bytes(tiny_model_bytes())

    registered = ok_json(admin(coordinator, "models", "register", str(model), "--note", "tiny", "--serve"))
    assert registered["served"] and registered["note"] == "tiny" and registered["parent_id"] is None
    versions = ok_json(admin(coordinator, "models", "list"))
    assert [(v["id"], v["served"]) for v in versions] == [(registered["id"], True)]
    table = admin(coordinator, "models", "list", as_json=False)
    assert table.exit_code == 0 and "tiny-dense" in table.stdout and "*" in table.stdout

    downloaded = tmp_path / "down.safetensors"
    ok_json(admin(coordinator, "models", "download", str(registered["id"]), "--out", str(downloaded)))
    assert downloaded.read_bytes() == model.read_bytes()

    token = ok_json(admin(coordinator, "tokens", "issue", "--uses", "2", "--ttl", "600", "--note", "cli test"))
    assert token["max_uses"] == 2 and token["token"].startswith("ffe_")

    with httpx.Client(base_url=coordinator.url, timeout=10) as http:
        enrolled = http.post("/v1/enroll", json={"token": token["token"], "label": "phone-1"})
        assert enrolled.status_code == 201, enrolled.text
        device = enrolled.json()
        auth = {"Authorization": f"Bearer {device['credential']}"}

        rnd = ok_json(admin(coordinator, "rounds", "start", "--algorithm", "fedavg-plain", "--target", "2",
                            "--min", "2", "--over-selection", "1.0", "--deadline", "600", "--epochs", "2",
                            "--batch-size", "16", "--lr", "0.05", "--optimizer", "adam", "--momentum", "0.5",
                            "--weight-decay", "0.001"))
        assert rnd["state"] == "collecting"
        assert rnd["config"]["target_devices"] == 2 and rnd["config"]["optimizer"] == "adam"
        assert rnd["config"]["local_epochs"] == 2 and rnd["config"]["learning_rate"] == 0.05

        checked_in = http.post("/v1/check-in", headers=auth)
        assert checked_in.status_code == 200 and checked_in.json()["status"] == "task"

        stopped = ok_json(admin(coordinator, "rounds", "stop", str(rnd["id"])))
        assert stopped["id"] == rnd["id"]
        waited = admin(coordinator, "rounds", "wait", str(rnd["id"]), "--timeout", "30", "--interval", "0.1")
        assert waited.exit_code == 1, waited.stdout + waited.stderr  # it failed: only 0 of 2 submitted
        final = json.loads(waited.stdout)
        assert final["state"] == "failed" and "quorum" in final["failure_reason"]

        listed = ok_json(admin(coordinator, "rounds", "list"))
        mine = next(r for r in listed if r["id"] == rnd["id"])
        assert (mine["selected"], mine["submitted"], mine["accepted"], mine["rejected"]) == (1, 0, 0, 0)
        shown = admin(coordinator, "rounds", "show", str(rnd["id"]), as_json=False)
        assert shown.exit_code == 0 and "quorum not met" in shown.stdout

        revoked = ok_json(admin(coordinator, "devices", "revoke", device["device_id"]))
        assert revoked["revoked_at"] is not None
        refused = http.post("/v1/check-in", headers=auth)
        assert refused.status_code == 403 and refused.json()["code"] == "credential_revoked"
    assert ok_json(admin(coordinator, "devices", "list", "--active-only")) == []
    assert [d["id"] for d in ok_json(admin(coordinator, "devices", "list"))] == [device["device_id"]]

    actions = {e["action"] for e in ok_json(admin(coordinator, "audit", "--limit", "50"))}
    assert {"model.register", "round.start", "round.stop"} <= actions


def test_bad_token_prints_unauthorized(coordinator: ServedCoordinator) -> None:
    result = admin(coordinator, "models", "list", token="not-the-token", as_json=False)
    assert result.exit_code == 1
    assert "unauthorized" in result.stderr and "wrong admin token" in result.stderr
    as_json = admin(coordinator, "models", "list", token="not-the-token")
    assert as_json.exit_code == 1 and json.loads(as_json.stderr)["error"]["code"] == "unauthorized"


def test_token_file_and_usage_errors(coordinator: ServedCoordinator, tmp_path: Path) -> None:
    token_file = tmp_path / "admin-token"
    token_file.write_text(coordinator.token + "\n")
    via_file = runner.invoke(app, ["admin", "--server", coordinator.url, "--token-file", str(token_file), "--json",
                                   "rounds", "list"], env={"FEDFACE_ADMIN_TOKEN": "stale-token-from-env"})
    assert via_file.exit_code == 0, via_file.stderr

    no_token = runner.invoke(app, ["admin", "--server", coordinator.url, "rounds", "list"],
                             env={"FEDFACE_ADMIN_TOKEN": "", "FEDFACE_ADMIN_TOKEN_FILE": ""})
    assert no_token.exit_code == 2 and "no admin token" in no_token.stderr

    bad_param = admin(coordinator, "rounds", "start", "--param", "not-a-pair")
    assert bad_param.exit_code == 2
    unknown = admin(coordinator, "rounds", "show", "999999")
    assert unknown.exit_code == 1 and json.loads(unknown.stderr)["error"]["code"] == "round_not_found"


def test_unreachable_server_exits_1(tmp_path: Path) -> None:
    dead = ServedCoordinator("http://127.0.0.1:9", "x", tmp_path, tmp_path / "log")
    result = admin(dead, "models", "list", as_json=False)
    assert result.exit_code == 1 and "connection_error" in result.stderr


def test_tokens_list_and_revoke(coordinator: ServedCoordinator) -> None:
    issued = ok_json(admin(coordinator, "tokens", "issue", "--uses", "2", "--note", "cli tokens"))
    listed = {t["id"]: t for t in ok_json(admin(coordinator, "tokens", "list"))}
    assert listed[issued["id"]]["note"] == "cli tokens" and listed[issued["id"]]["revoked_at"] is None
    assert "token" not in listed[issued["id"]]
    table = admin(coordinator, "tokens", "list", as_json=False)
    assert table.exit_code == 0 and issued["id"] in table.stdout and issued["token"] not in table.stdout

    revoked = ok_json(admin(coordinator, "tokens", "revoke", issued["id"]))
    assert revoked["id"] == issued["id"] and revoked["revoked_at"] is not None
    shown = admin(coordinator, "tokens", "list", as_json=False)
    assert shown.exit_code == 0 and "revoked" in shown.stdout
    with httpx.Client(base_url=coordinator.url, timeout=10) as http:
        refused = http.post("/v1/enroll", json={"token": issued["token"], "label": "late"})
        assert refused.status_code == 401 and refused.json()["code"] == "invalid_enrollment_token"

    unknown = admin(coordinator, "tokens", "revoke", "00000000-0000-0000-0000-000000000000")
    assert unknown.exit_code == 1 and json.loads(unknown.stderr)["error"]["code"] == "token_not_found"
