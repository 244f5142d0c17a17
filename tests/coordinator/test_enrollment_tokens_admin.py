"""Enrollment tokens through the admin API: listed without their secrets, revoked
so that no further device enrolls with them, over real HTTP on Postgres."""

from __future__ import annotations

import uuid

import httpx

from tests.support.fleet import ADMIN, enroll

TOKENS = "/v1/admin/enrollment-tokens"


def _issue(api: httpx.Client, note: str, max_uses: int = 3) -> dict[str, str]:
    r = api.post(TOKENS, json={"max_uses": max_uses, "ttl_s": 600, "note": note}, headers=ADMIN)
    assert r.status_code == 201, r.text
    return dict(r.json())


def _listed(api: httpx.Client) -> dict[str, dict[str, object]]:
    r = api.get(TOKENS, params={"limit": 1000}, headers=ADMIN)
    assert r.status_code == 200, r.text
    return {t["id"]: t for t in r.json()}


def test_list_shows_tokens_without_secrets(api: httpx.Client) -> None:
    issued = _issue(api, "listed")
    listed = _listed(api)[issued["id"]]
    assert set(listed) == {"id", "note", "uses", "max_uses", "expires_at", "created_at", "revoked_at"}
    assert (listed["note"], listed["uses"], listed["max_uses"], listed["revoked_at"]) == ("listed", 0, 3, None)
    r = api.get(TOKENS, params={"limit": 1000}, headers=ADMIN)
    assert issued["token"] not in r.text and "hash" not in r.text
    assert len(api.get(TOKENS, params={"limit": 1}, headers=ADMIN).json()) == 1
    for bad in ("0", "1001", "010", "+1"):
        assert api.get(TOKENS, params={"limit": bad}, headers=ADMIN).status_code == 422, bad


def test_revoke_stops_enrollment_and_changes_nothing_else(api: httpx.Client) -> None:
    revoked, other = _issue(api, "to revoke"), _issue(api, "kept")
    (device,) = enroll(api, 1, token=revoked["token"])
    before = _listed(api)

    r = api.post(f"{TOKENS}/{revoked['id']}/revoke", headers=ADMIN)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == revoked["id"] and body["revoked_at"] is not None and "token" not in body
    again = api.post(f"{TOKENS}/{revoked['id']}/revoke", headers=ADMIN)  # idempotent: same revocation
    assert again.status_code == 200 and again.json() == body

    refused = api.post("/v1/enroll", json={"token": revoked["token"], "label": "late"})
    assert refused.status_code == 401 and refused.json()["code"] == "invalid_enrollment_token"

    after = _listed(api)
    assert after[revoked["id"]] == {**before[revoked["id"]], "revoked_at": body["revoked_at"]}
    assert after[revoked["id"]]["uses"] == 1
    assert after[other["id"]] == before[other["id"]]
    enroll(api, 1, token=other["token"])  # the other token still enrolls
    assert api.post("/v1/check-in", headers=device.auth).status_code == 200  # enrolled devices keep working

    audit = api.get("/v1/admin/audit", params={"limit": 5000}, headers=ADMIN).json()
    assert [e["actor"] for e in audit if e["action"] == "token.revoke" and e["target"] == revoked["id"]] == ["admin"]


def test_unknown_or_malformed_token_id(api: httpx.Client) -> None:
    r = api.post(f"{TOKENS}/{uuid.uuid4()}/revoke", headers=ADMIN)
    assert r.status_code == 404 and r.json()["code"] == "token_not_found"
    assert r.headers["content-type"].startswith("application/problem+json")
    assert api.post(f"{TOKENS}/not-a-uuid/revoke", headers=ADMIN).status_code == 422


def test_device_credential_and_no_credential_refused(api: httpx.Client) -> None:
    issued = _issue(api, "guarded")
    (device,) = enroll(api, 1)
    for headers in (device.auth, {}, {"Authorization": "Bearer not-the-admin-token"}):
        listed = api.get(TOKENS, headers=headers)
        assert listed.status_code == 401 and listed.json()["code"] == "unauthorized"
        revoked = api.post(f"{TOKENS}/{issued['id']}/revoke", headers=headers)
        assert revoked.status_code == 401 and revoked.json()["code"] == "unauthorized"
    assert _listed(api)[issued["id"]]["revoked_at"] is None
