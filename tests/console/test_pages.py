"""Each console page renders with real data on Postgres, over real HTTP."""

from __future__ import annotations

import httpx

from coordinator.console.web import CSP
from tests.console.data import collecting_round, committed_round


def test_every_page_renders_the_fleet(api: httpx.Client, console: httpx.Client) -> None:
    fleet = committed_round(api)
    rnd, v2 = fleet.round, fleet.round["result_version_id"]

    overview = console.get("/console")
    assert overview.status_code == 200, overview.text
    assert overview.headers["content-security-policy"] == CSP
    assert f"version {v2}</a>" in overview.text
    assert 'id="devices-enrolled">3<' in overview.text
    assert 'id="round-state">committed<' in overview.text
    # This process drives rounds and has beaten: it is the lease holder and is listed.
    assert "drives rounds" in overview.text

    rounds = console.get("/console/rounds")
    assert rounds.status_code == 200 and f'href="/console/rounds/{rnd["id"]}"' in rounds.text
    assert console.get("/console/rounds", params={"state": "failed"}).text.count("/console/rounds/1\"") == 0
    assert f'/console/rounds/{rnd["id"]}"' in console.get("/console/rounds", params={"algorithm": "fedavg"}).text

    page = console.get(f"/console/rounds/{rnd['id']}")
    assert page.status_code == 200, page.text
    html = page.text
    assert "stale_base_version" in html  # failures by reason: the code the third device received
    assert html.count("<svg") >= 4  # loss, arrivals, bytes, refusals (and norms) are drawn
    assert 'id="robust-clipped">0<' in html  # the robust section of the committed metrics
    assert "dev-2" in html and "dev-0" in html  # participants
    assert "0.8 → 0.4" in html  # client loss before -> after, from the update's client metrics

    trends = console.get("/console/trends")
    assert trends.status_code == 200 and "<svg" in trends.text

    models = console.get("/console/models")
    assert models.status_code == 200
    assert f'id="version-{v2}"' in models.text and "served</span>" in models.text
    assert f"round {rnd['id']}</a> of v{fleet.v1['id']}" in models.text

    devices = console.get("/console/devices")
    assert devices.status_code == 200 and all(f"device-{d.device_id}" in devices.text for d in fleet.devices)
    found = console.get("/console/devices", params={"q": "dev-1"})
    assert found.text.count('<tr id="device-') == 1 and fleet.devices[1].device_id in found.text

    tokens = console.get("/console/tokens")
    assert tokens.status_code == 200 and "0 / 5" in tokens.text
    assert fleet.token not in tokens.text  # only ever its hash is stored

    audit = console.get("/console/audit")
    assert audit.status_code == 200 and "round.start" in audit.text and "model.register" in audit.text

    live = console.get("/console/fragments/overview")
    assert live.status_code == 200 and "<html" not in live.text and "round-progress" in live.text


def test_the_live_fragment_follows_a_running_round(api: httpx.Client, console: httpx.Client) -> None:
    fleet = committed_round(api)
    running = collecting_round(api, fleet)
    before = console.get("/console/fragments/overview").text
    assert 'id="round-state">collecting<' in before and 'id="round-selected">0<' in before
    assert '<time class="countdown"' in before
    fleet.devices[0].check_in()
    after = console.get(f"/console/fragments/rounds/{running['id']}").text
    assert 'id="round-selected">1<' in after
    assert f'href="/console/rounds/{running["id"]}/stop"' in after


def test_round_page_of_a_missing_round_is_the_apis_problem(console: httpx.Client) -> None:
    r = console.get("/console/rounds/999")
    assert r.status_code == 404 and "round_not_found" in r.text
    assert r.headers["content-type"].startswith("text/html")
