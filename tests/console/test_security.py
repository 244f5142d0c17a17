"""Who may open the console, and what a forged or replayed request can do: nothing."""

from __future__ import annotations

from contextlib import closing

import httpx
import pytest
from pydantic import SecretStr

from coordinator.console.auth import LOGIN_COOKIE, SESSION_COOKIE
from coordinator.settings import Settings
from tests.conftest import ADMIN_TOKEN
from tests.console.conftest import csrf_of, post_form, sign_in
from tests.console.data import committed_round
from tests.support.fleet import ADMIN, enroll, register_model
from tests.support.live import LiveServer, serving, wait_until

PAGES = ["/console", "/console/rounds", "/console/rounds/new", "/console/trends", "/console/models",
         "/console/devices", "/console/tokens", "/console/audit", "/console/models/rollback"]
FRAGMENTS = ["/console/fragments/overview", "/console/fragments/rounds/1"]
ACTIONS = ["/console/rounds", "/console/rounds/1/stop", "/console/rounds/1/cancel", "/console/models/1/promote",
           "/console/models/rollback", "/console/tokens", "/console/logout",
           "/console/devices/00000000-0000-0000-0000-000000000000/revoke"]


def _served(api: httpx.Client) -> int:
    return next(v["id"] for v in api.get("/v1/admin/models", headers=ADMIN).json() if v["served"])


def test_anonymous_requests_are_refused(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url, follow_redirects=False) as anon:
        for page in PAGES:
            r = anon.get(page)
            assert r.status_code == 303, page
            assert r.headers["location"].startswith("/console/login"), page
            assert r.headers["content-security-policy"].startswith("default-src 'self'")
        for fragment in FRAGMENTS:
            r = anon.get(fragment)
            assert r.status_code == 401 and "<html" not in r.text, fragment
        for action in ACTIONS:
            assert anon.post(action, data={"csrf": "x"}).status_code in (303, 401, 403), action
        # The admin API's bearer token is no console credential: the console signs in once, by form.
        assert anon.get("/console", headers=ADMIN).status_code == 303


def test_device_credentials_are_refused(api: httpx.Client, server: LiveServer) -> None:
    register_model(api)
    (device,) = enroll(api, 1)
    with closing(sign_in(server.url)) as browser:  # even beside a valid session cookie
        for path in [*PAGES, *FRAGMENTS, "/console/login", "/console/static/console.css"]:
            assert browser.get(path, headers=device.auth).status_code == 403, path
        assert browser.post("/console/tokens", headers=device.auth, data={"csrf": "x"}).status_code == 403
    with httpx.Client(base_url=server.url) as anon:
        page = anon.get("/console/login")
        # A device credential typed in as the admin token does not sign in.
        r = anon.post("/console/login", data={"csrf": csrf_of(page.text), "token": device.credential})
        assert r.status_code == 401 and SESSION_COOKIE not in r.cookies


def test_sign_in_cookie_and_headers(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url, follow_redirects=False) as c:
        page = c.get("/console/login")
        assert page.headers["cache-control"] == "no-store"
        wrong = c.post("/console/login", data={"csrf": csrf_of(page.text), "token": ADMIN_TOKEN + "x"})
        assert wrong.status_code == 401 and SESSION_COOKIE not in wrong.cookies
        page = c.get("/console/login")
        no_csrf = c.post("/console/login", data={"token": ADMIN_TOKEN})
        assert no_csrf.status_code == 403 and SESSION_COOKIE not in no_csrf.cookies
        ok = c.post("/console/login", data={"csrf": csrf_of(page.text), "token": ADMIN_TOKEN,
                                            "next": "//evil.example/console"})
        assert ok.status_code == 303 and ok.headers["location"] == "/console"  # no open redirect
        cookie = ok.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/console" in cookie
        assert "max-age=" in cookie and "secure" not in cookie  # plain http on loopback
        assert ADMIN_TOKEN not in ok.headers["set-cookie"] and ADMIN_TOKEN not in ok.headers["location"]
        assert c.get("/console").status_code == 200


def test_secure_cookie_when_configured(settings: Settings) -> None:
    with serving(settings.model_copy(update={"console_secure_cookie": True})) as api:
        page = api.get("/console/login")
        assert "; secure" in page.headers["set-cookie"].lower()  # the sign-in form's cookie too
        # A client keeps a Secure cookie away from plain http, so it is sent by hand here, as over TLS.
        form_cookie = page.headers["set-cookie"].split(";")[0]
        r = api.post("/console/login", data={"csrf": csrf_of(page.text), "token": ADMIN_TOKEN},
                     headers={"Cookie": form_cookie})
        assert r.status_code == 303
        assert "; secure" in r.headers["set-cookie"].lower()


def test_missing_or_wrong_csrf_is_refused_and_changes_nothing(api: httpx.Client, console: httpx.Client,
                                                              server: LiveServer) -> None:
    fleet = committed_round(api)
    served, device = _served(api), fleet.devices[0]
    audit_before = len(api.get("/v1/admin/audit", headers=ADMIN).json())
    forged = [
        ("/console/models/1/promote", {}),
        ("/console/models/rollback", {}),
        (f"/console/devices/{device.device_id}/revoke", {}),
        ("/console/rounds", {"algorithm": "fedavg", "target_devices": "1"}),
        ("/console/tokens", {"max_uses": "3"}),
    ]
    for action, fields in forged:
        for token in (None, "", "0" * 64, csrf_of(console.get("/console").text)[:-1] + "x"):
            data = dict(fields) if token is None else {**fields, "csrf": token}
            r = console.post(action, data=data)
            assert r.status_code == 403 and "CSRF" in r.text, (action, token, r.status_code)
    # Another signed-in session's token is no good either: it is bound to its own session.
    with closing(sign_in(server.url)) as other:
        theirs = csrf_of(other.get("/console").text)
    assert console.post("/console/models/rollback", data={"csrf": theirs}).status_code == 403
    # A form posted from another site is refused before its token is looked at.
    mine = csrf_of(console.get("/console").text)
    assert console.post("/console/models/rollback", data={"csrf": mine},
                        headers={"Origin": "https://evil.example"}).status_code == 403

    assert _served(api) == served
    assert api.get("/v1/admin/rounds", headers=ADMIN).json()[0]["id"] == fleet.round["id"]
    assert all(d["revoked_at"] is None for d in api.get("/v1/admin/devices", headers=ADMIN).json())
    assert len(api.get("/v1/admin/audit", headers=ADMIN).json()) == audit_before
    assert device.check_in()["status"] == "wait"  # its credential still works


def test_sign_out_ends_the_session_even_for_a_copied_cookie(server: LiveServer) -> None:
    browser = sign_in(server.url)
    copied = browser.cookies.get(SESSION_COOKIE, path="/console")
    assert copied
    r = post_form(browser, "/console", "/console/logout")
    assert r.status_code == 303 and r.headers["location"] == "/console/login"
    with httpx.Client(base_url=server.url, follow_redirects=False) as thief:
        thief.cookies.set(SESSION_COOKIE, copied, path="/console")
        assert thief.get("/console").status_code == 303
        assert thief.get("/console/fragments/overview").status_code == 401
    browser.close()


def test_sessions_expire(settings: Settings) -> None:
    with serving(settings.model_copy(update={"console_session_s": 1.0})) as api:
        browser = sign_in(str(api.base_url))
        cookie = browser.cookies.get(SESSION_COOKIE, path="/console")
        browser.close()
        assert cookie
        # The cookie is replayed without its Max-Age, so that only the server can end the session.
        with httpx.Client(base_url=api.base_url, timeout=30, follow_redirects=False) as replay:
            replay.cookies.set(SESSION_COOKIE, cookie, path="/console")
            assert replay.get("/console").status_code == 200
            wait_until(lambda: replay.get("/console").status_code == 303, timeout=10, interval=0.2,
                       what="the console session to expire")
            assert replay.get("/console/fragments/overview").status_code == 401


def test_a_new_admin_token_ends_every_session(settings: Settings) -> None:
    secret = SecretStr("console-secret-for-the-test-8c1d52a9e0")
    with serving(settings.model_copy(update={"console_secret": secret})) as api:
        browser = sign_in(str(api.base_url))
        cookie = browser.cookies.get(SESSION_COOKIE, path="/console")
        browser.close()
    assert cookie
    # A restart with the same secret and token keeps the session (the control) ...
    with serving(settings.model_copy(update={"console_secret": secret})) as api:
        api.cookies.set(SESSION_COOKIE, cookie, path="/console")
        assert api.get("/console", follow_redirects=False).status_code == 200
    # ... a new admin token ends it.
    rotated = settings.model_copy(update={"console_secret": secret,
                                          "admin_token": SecretStr("rotated-admin-token-2b7e91c4d3a8f605e1b9")})
    with serving(rotated) as api:
        api.cookies.set(SESSION_COOKIE, cookie, path="/console")
        assert api.get("/console", follow_redirects=False).status_code == 303


def test_generated_secret_is_kept_private(server: LiveServer, settings: Settings) -> None:
    sign_in(server.url).close()
    path = settings.data_dir / "console-secret"
    assert path.stat().st_mode & 0o077 == 0
    assert len(path.read_text().strip()) >= 48


def test_login_form_cookie_is_needed(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url) as first, httpx.Client(base_url=server.url) as second:
        token = csrf_of(first.get("/console/login").text)
        assert LOGIN_COOKIE in first.cookies
        # The form's token without the cookie it was issued with: refused.
        r = second.post("/console/login", data={"csrf": token, "token": ADMIN_TOKEN})
        assert r.status_code == 403


@pytest.mark.parametrize("path", ["/console/static/console.css", "/console/static/console.js"])
def test_assets_are_served_by_the_coordinator(server: LiveServer, path: str) -> None:
    r = httpx.get(server.url + path)
    assert r.status_code == 200 and r.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(server.url + "/console/static/..%2Fauth.py").status_code == 404
