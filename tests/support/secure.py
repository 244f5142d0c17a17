"""Scripted devices of a secure round over HTTP: each holds its SecAggDevice state and answers the stage its
check-in names, as the agent does, with the update it is given (clipped per group, noised when the round has
distributed DP, weighted by its sample count when the round is weighted, and encoded by the agent's own
`encode_input`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from fedface_common.secagg.device import SecAggDevice, encode_input
from fedface_common.secagg.messages import MASKED_INPUT_TENSOR, ForwardedShares, NeighbourKeys, UnmaskRequest
from fedface_common.secagg.task import SECAGG_META_KEY, SecAggTask
from fedface_common.tensors import encode
from tests.support.fleet import Device, get_round
from tests.support.live import wait_until


@dataclass
class SecureDevice:
    device: Device
    update: dict[str, np.ndarray]
    num_samples: int = 1  # only weighs the update in a weighted round; the count header still says 1
    state: SecAggDevice | None = None
    sent: dict[str, httpx.Response] = field(default_factory=dict)
    body: bytes | None = None

    def task(self) -> tuple[dict[str, Any], SecAggTask | None]:
        answer = self.device.check_in()
        if answer["status"] != "task":
            return answer, None
        return answer["task"], SecAggTask.model_validate(answer["task"]["secagg"])

    def post(self, round_id: int, stage: str, message: Any) -> httpx.Response:
        return self.device.api.post(f"/v1/rounds/{round_id}/secagg/{stage}", content=message.model_dump_json(),
                                    headers={**self.device.auth, "Content-Type": "application/json"})

    def act(self, stage: str) -> httpx.Response | None:
        """Check in; if the round is at `stage` and has inputs for this device, answer it."""
        task, sa = self.task()
        if sa is None or sa.stage != stage or sa.params is None:
            return None
        round_id = int(task["round_id"])
        if stage == "advertise":
            self.state = self.state or SecAggDevice.create(sa.params, self.device.device_id)
            r = self.post(round_id, stage, self.state.advertise())
        elif stage == "share_keys":
            assert self.state is not None and sa.neighbour_keys is not None
            self.state, message = self.state.share_keys(NeighbourKeys.model_validate(sa.neighbour_keys))
            r = self.post(round_id, stage, message)
        elif stage == "masked_input":
            assert self.state is not None and sa.forwarded is not None
            self.body = self.masked_body(sa, ForwardedShares.model_validate(sa.forwarded))
            r = self.device.submit(round_id, self.body, base_version=task["model_version"])
        elif stage == "unmask":
            assert self.state is not None and sa.unmask_request is not None
            self.state, response = self.state.unmask(UnmaskRequest.model_validate(sa.unmask_request))
            r = self.post(round_id, stage, response)
        else:
            raise ValueError(stage)
        self.sent[stage] = r
        return r

    def masked_body(self, sa: SecAggTask, forwarded: ForwardedShares) -> bytes:
        assert self.state is not None and sa.params is not None
        x = encode_input(sa.params, sa.layout, self.update, self.num_samples)
        self.state, masked, meta = self.state.mask(x, forwarded)
        return encode({MASKED_INPUT_TENSOR: masked}, {SECAGG_META_KEY: meta.model_dump_json()})


def stage_of(api: httpx.Client, device: SecureDevice) -> str | None:
    _, sa = device.task()
    return None if sa is None else sa.stage


# A stage probe is a check-in, and check-ins are rate limited per device (120 a minute by default): polling
# at this interval stays below the limit however long a stage waits for a silent device.
PROBE_INTERVAL_S = 0.6


def wait_stage(api: httpx.Client, probe: SecureDevice, stage: str, timeout: float = 30) -> None:
    wait_until(lambda: stage_of(api, probe) == stage, timeout=timeout, interval=PROBE_INTERVAL_S,
               what=f"stage {stage}")


STAGES = ("advertise", "share_keys", "masked_input", "unmask")


def run_secure_round(api: httpx.Client, round_id: int, devices: list[SecureDevice],
                     silent: dict[str, set[int]] | None = None, timeout: float = 60) -> dict[str, Any]:
    """Every device checks in (selection), then answers each stage unless `silent[stage]` names it; returns
    the finished round."""
    silent = silent or {}
    for d in devices:
        d.task()
    done: set[int] = set()
    for stage in STAGES:
        active = [i for i, d in enumerate(devices) if i not in done]
        if not active:
            break
        probe = devices[active[0]]
        wait_until(lambda p=probe, s=stage: stage_of(api, p) == s or _finished(api, round_id),  # type: ignore[misc]
                   timeout=timeout, interval=PROBE_INTERVAL_S, what=f"stage {stage}")
        if _finished(api, round_id):
            break
        for i in active:
            if i in silent.get(stage, set()):
                done.add(i)  # a device that misses a stage never comes back
                continue
            r = devices[i].act(stage)
            assert r is None or r.status_code == 200, r.text
    wait_until(lambda: _finished(api, round_id), timeout=timeout, what="round end")
    return get_round(api, round_id)


def _finished(api: httpx.Client, round_id: int) -> bool:
    return get_round(api, round_id)["state"] in ("committed", "failed")


def secure_params(**overrides: Any) -> dict[str, Any]:
    return {"secagg": {"clip_norm": 10.0, "stage_s": 4.0, **overrides}}


def as_json(message: Any) -> str:
    return json.dumps(message)
