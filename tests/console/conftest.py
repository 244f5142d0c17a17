"""Fixtures of the console tests: the live coordinator, an API client, and a browser-like signed-in
client that keeps cookies and sends the CSRF token its pages carry."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN
from tests.support.live import LiveServer

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "the page carries no CSRF token"
    return found.group(1)


def sign_in(base_url: str, token: str = ADMIN_TOKEN) -> httpx.Client:
    """A client signed in as a browser would be: the sign-in form's cookie and token, then the session."""
    client = httpx.Client(base_url=base_url, timeout=30, follow_redirects=False)
    page = client.get("/console/login")
    assert page.status_code == 200, page.text
    r = client.post("/console/login", data={"csrf": csrf_of(page.text), "token": token, "next": "/console"})
    assert r.status_code == 303, r.text
    assert r.headers["location"] == "/console"
    return client


def post_form(client: httpx.Client, page: str, action: str, **fields: str) -> httpx.Response:
    """Open PAGE (for its CSRF token) and post FIELDS to ACTION, as its form would."""
    token = csrf_of(client.get(page).text)
    return client.post(action, data={"csrf": token, **fields})


@pytest.fixture
def api(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture
def console(server: LiveServer) -> Iterator[httpx.Client]:
    client = sign_in(server.url)
    yield client
    client.close()
