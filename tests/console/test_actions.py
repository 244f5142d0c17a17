"""Operator actions through the console's forms: the same services, rules and refusals as the admin API."""

from __future__ import annotations

import re

import httpx

from tests.console.conftest import csrf_of, post_form
from tests.console.data import collecting_round, committed_round
from tests.support.fleet import ADMIN, get_round, model_bytes, register_model, tiny_model
from tests.support.live import wait_until


def _rounds(api: httpx.Client) -> list[dict[str, object]]:
    return list(api.get("/v1/admin/rounds", headers=ADMIN).json())


def _versions(api: httpx.Client) -> list[dict[str, object]]:
    return list(api.get("/v1/admin/models", headers=ADMIN).json())


def test_start_round_form_is_validated_by_round_config(api: httpx.Client, console: httpx.Client) -> None:
    register_model(api)
    form = console.get("/console/rounds/new")
    assert form.status_code == 200 and 'value="600.0"' in form.text  # RoundConfig's default deadline

    bad = post_form(console, "/console/rounds/new", "/console/rounds", algorithm="fedavg", target_devices="2",
                    min_devices="5")
    assert bad.status_code == 422 and "min_devices cannot exceed target_devices" in bad.text
    assert 'value="5"' in bad.text  # the form comes back as it was sent
    bad_json = post_form(console, "/console/rounds/new", "/console/rounds", algorithm="fedavg", params="{nope")
    assert bad_json.status_code == 422 and "params: not JSON" in bad_json.text
    typo = post_form(console, "/console/rounds/new", "/console/rounds", algorithm="fedavg", deadline_s="-1")
    assert typo.status_code == 422 and "deadline_s" in typo.text
    unknown = post_form(console, "/console/rounds/new", "/console/rounds", algorithm="fedsomething")
    assert unknown.status_code == 422 and "invalid_config" in unknown.text  # the service's own refusal
    assert _rounds(api) == []

    ok = post_form(console, "/console/rounds/new", "/console/rounds", algorithm="fedavg", target_devices="4",
                   min_devices="2", deadline_s="900", params='{"server_lr": 0.5}')
    assert ok.status_code == 303
    round_id = int(ok.headers["location"].rsplit("/", 1)[1])
    rnd = get_round(api, round_id)
    assert rnd["state"] == "collecting" and rnd["config"]["target_devices"] == 4
    assert rnd["config"]["params"] == {"server_lr": 0.5} and rnd["config"]["deadline_s"] == 900
    entry = api.get("/v1/admin/audit", headers=ADMIN).json()[0]
    assert entry["action"] == "round.start" and entry["actor"] == "admin:console"


def test_model_changes_are_refused_while_a_round_runs(api: httpx.Client, console: httpx.Client) -> None:
    fleet = committed_round(api)
    running = collecting_round(api, fleet)
    served = next(v["id"] for v in _versions(api) if v["served"])

    confirm = console.get(f"/console/models/{fleet.v1['id']}/promote")
    assert confirm.status_code == 200 and 'id="confirm"' in confirm.text
    refused = console.post(f"/console/models/{fleet.v1['id']}/promote", data={"csrf": csrf_of(confirm.text)})
    assert refused.status_code == 409 and "round_active" in refused.text
    assert f"round {running['id']} is collecting" in refused.text
    rollback = post_form(console, "/console/models/rollback", "/console/models/rollback")
    assert rollback.status_code == 409 and "round_active" in rollback.text
    upload = console.post("/console/models", data={"csrf": csrf_of(console.get("/console/models").text),
                                                   "confirm": "yes", "serve": "yes"},
                          files={"file": ("m.safetensors", model_bytes(tiny_model(3)))})
    assert upload.status_code == 409 and "round_active" in upload.text
    assert next(v["id"] for v in _versions(api) if v["served"]) == served and len(_versions(api)) == 2

    # Stop, then the promotion goes through.
    assert post_form(console, f"/console/rounds/{running['id']}/stop",
                     f"/console/rounds/{running['id']}/stop").status_code == 303
    wait_until(lambda: get_round(api, running["id"])["state"] == "failed", what="quorum missed at stop")
    done = console.post(f"/console/models/{fleet.v1['id']}/promote", data={"csrf": csrf_of(confirm.text)})
    assert done.status_code == 303
    assert next(v["id"] for v in _versions(api) if v["served"]) == fleet.v1["id"]


def test_cancel_rollback_and_register(api: httpx.Client, console: httpx.Client) -> None:
    fleet = committed_round(api)
    running = collecting_round(api, fleet)
    cancel = post_form(console, f"/console/rounds/{running['id']}/cancel", f"/console/rounds/{running['id']}/cancel")
    assert cancel.status_code == 303 and get_round(api, running["id"])["state"] == "cancelled"
    again = post_form(console, f"/console/rounds/{running['id']}", f"/console/rounds/{running['id']}/cancel")
    assert again.status_code == 409 and "invalid_round_state" in again.text

    assert post_form(console, "/console/models/rollback", "/console/models/rollback").status_code == 303
    assert next(v["id"] for v in _versions(api) if v["served"]) == fleet.v1["id"]

    page = console.get("/console/models")
    unconfirmed = console.post("/console/models", data={"csrf": csrf_of(page.text)},
                               files={"file": ("m.safetensors", model_bytes(tiny_model(4)))})
    assert unconfirmed.status_code == 422 and len(_versions(api)) == 2
    not_a_model = console.post("/console/models", data={"csrf": csrf_of(page.text), "confirm": "yes"},
                               files={"file": ("m.safetensors", b"not safetensors")})
    assert not_a_model.status_code == 422 and "invalid_tensors" in not_a_model.text
    ok = console.post("/console/models", data={"csrf": csrf_of(page.text), "confirm": "yes", "serve": "yes",
                                               "note": "from the console"},
                      files={"file": ("m.safetensors", model_bytes(tiny_model(4)))})
    assert ok.status_code == 303
    newest = max(_versions(api), key=lambda v: int(str(v["id"])))
    assert newest["served"] and newest["note"] == "from the console" and newest["parent_id"] is None


def test_tokens_and_devices(api: httpx.Client, console: httpx.Client) -> None:
    fleet = committed_round(api)
    issued = post_form(console, "/console/tokens", "/console/tokens", max_uses="2", ttl_s="600", note="lab")
    assert issued.status_code == 201
    token = re.search(r'id="issued-token">(ffe_[^<]+)<', issued.text)
    assert token, issued.text
    assert console.get("/console/tokens").text.count(token.group(1)) == 0  # shown once
    r = api.post("/v1/enroll", json={"token": token.group(1), "label": "new-phone"})
    assert r.status_code == 201
    token_id = re.search(r'id="token-([0-9a-f-]{36})"', issued.text)
    assert token_id
    assert post_form(console, f"/console/tokens/{token_id.group(1)}/revoke",
                     f"/console/tokens/{token_id.group(1)}/revoke").status_code == 303
    assert api.post("/v1/enroll", json={"token": token.group(1)}).status_code == 401
    assert post_form(console, "/console/tokens", "/console/tokens", max_uses="0").status_code == 422

    device = fleet.devices[1]
    revoke = post_form(console, f"/console/devices/{device.device_id}/revoke",
                       f"/console/devices/{device.device_id}/revoke")
    assert revoke.status_code == 303
    assert device.api.post("/v1/check-in", headers=device.auth).json()["code"] == "credential_revoked"
    assert "revoked" in console.get("/console/devices", params={"q": device.device_id}).text
