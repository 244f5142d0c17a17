"""Real data for the console's pages, made through the device and admin APIs over HTTP."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from tests.support.fleet import Device, delta_bytes, enroll, get_round, issue_token, register_model, start_round
from tests.support.live import wait_until


@dataclass
class Fleet:
    v1: dict[str, Any]
    devices: list[Device]
    round: dict[str, Any]
    token: str


def committed_round(api: httpx.Client) -> Fleet:
    """Version 1, three devices, one fedavg round committed from two updates (with client losses) while
    the third device's update was refused as stale; an open enrollment token."""
    v1 = register_model(api)
    devices = enroll(api, 3)
    rnd = start_round(api, target_devices=2, min_devices=1)
    for d in devices:
        assert d.check_in()["status"] == "task"
    stale = devices[2].submit(rnd["id"], delta_bytes(2), base_version=v1["id"] + 100)
    assert stale.status_code == 409 and stale.json()["code"] == "stale_base_version", stale.text
    for i, d in enumerate(devices[:2]):
        r = d.submit(rnd["id"], delta_bytes(i), num_samples=3 + i, base_version=v1["id"],
                     metrics={"loss_before": 0.8 - 0.1 * i, "loss_after": 0.4 - 0.1 * i})
        assert r.status_code == 200, r.text
    wait_until(lambda: get_round(api, rnd["id"])["state"] == "committed", what="round commit")
    return Fleet(v1, devices, get_round(api, rnd["id"]), issue_token(api, max_uses=5))


def collecting_round(api: httpx.Client, fleet: Fleet) -> dict[str, Any]:
    """A round collecting (long deadline) on top of FLEET's committed one."""
    return start_round(api, target_devices=3, min_devices=2, deadline_s=3600)
