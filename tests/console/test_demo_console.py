"""The coordinator `fedface demo` starts (a `fedface serve` process on the embedded SQLite and Redis
stand-in) serves the console, reachable with the admin token the demo prints."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import httpx
import pytest

from fedface_lab.simulate import coordinator
from tests.console.conftest import sign_in
from tests.support.fleet import enroll, register_model


def test_the_demos_coordinator_serves_the_console(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDFACE_DATABASE_URL", raising=False)
    monkeypatch.delenv("FEDFACE_REDIS_URL", raising=False)
    with coordinator(tmp_path) as (url, token, backend):
        assert backend == "embedded"
        admin = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, timeout=30) as api:
            register_model(api, admin=admin)
            (device,) = enroll(api, 1, admin=admin)
        with closing(sign_in(url, token)) as console:
            overview = console.get("/console")
            assert overview.status_code == 200 and "version 1</a>" in overview.text
            devices = console.get("/console/devices", params={"q": "dev-0"})
            assert devices.status_code == 200 and device.device_id in devices.text
            for page in ("/console/rounds", "/console/trends", "/console/models", "/console/audit"):
                assert console.get(page).status_code == 200, page
