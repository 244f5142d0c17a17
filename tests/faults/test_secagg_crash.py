"""kill -9 of the coordinator in the middle of each stage of a secure round: half the devices have answered
the stage when it dies. A new process on the same Postgres, Redis and blob store re-reads the stage, takes
the other half's messages (and the first half's resends, answered as before) and the round commits the
mean of every device's clipped update, within the fixed-point bound."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from fedface_common.tensors import decode
from tests.support.fleet import ADMIN, delta, enroll, get_round, register_model, start_round, tiny_model
from tests.support.live import wait_until
from tests.support.proc import CoordinatorProcess
from tests.support.secure import STAGES, SecureDevice, secure_params, stage_of, wait_stage

pytestmark = pytest.mark.faults
N = 4


@pytest.mark.parametrize("killed_at", STAGES)
def test_killed_mid_stage_resumes_with_the_same_sum(proc_env: dict[str, str], tmp_path: Path,
                                                    processes: list[CoordinatorProcess], killed_at: str) -> None:
    def start() -> httpx.Client:
        proc = CoordinatorProcess(proc_env, tmp_path / f"coordinator-{len(processes)}.log").start()
        processes.append(proc)
        return httpx.Client(base_url=proc.url, timeout=30)

    api = start()
    base = tiny_model()
    register_model(api, base)
    updates = [delta(i, embedding=False) for i in range(N)]
    devices = [SecureDevice(d, u) for d, u in zip(enroll(api, N), updates, strict=True)]
    rnd = start_round(api, algorithm="fedavg-plain", target_devices=N, min_devices=N, deadline_s=60,
                      params=secure_params(stage_s=60))
    round_id = int(rnd["id"])
    for d in devices:
        d.task()
    for stage in STAGES:
        wait_stage(api, devices[0], stage)
        if stage != killed_at:
            for d in devices:
                assert d.act(stage).status_code == 200  # type: ignore[union-attr]
            continue
        for d in devices[: N // 2]:
            assert d.act(stage).status_code == 200  # type: ignore[union-attr]
        processes[-1].kill()
        api.close()
        api = start()
        for d in devices:
            d.device.api = api
        assert stage_of(api, devices[0]) == stage  # the new process continues the same stage
        for d in devices[N // 2:]:
            assert d.act(stage).status_code == 200  # type: ignore[union-attr]
        # A resend of an acknowledged message is answered as before and changes nothing.
        first = devices[0]
        if stage == "masked_input":
            assert first.body is not None
            resent = first.device.submit(round_id, first.body, base_version=rnd["base_version_id"])
        else:
            resent = first.device.api.post(f"/v1/rounds/{round_id}/secagg/{stage}",
                                           content=first.sent[stage].request.content,
                                           headers={**first.device.auth, "Content-Type": "application/json"})
        assert resent.status_code == 200, resent.text
    wait_until(lambda: get_round(api, round_id)["state"] in ("committed", "failed"), timeout=60, what="end")
    done = get_round(api, round_id)
    assert done["state"] == "committed", done["failure_reason"]
    assert done["metrics"]["secagg"]["survivors"] == N
    bound = done["metrics"]["secagg"]["error_bound_mean"]
    got = decode(api.get(f"/v1/admin/models/{done['result_version_id']}/weights", headers=ADMIN).content)
    for name in ("layer.weight", "layer.bias"):
        want = base[name] + np.mean([u[name] for u in updates], axis=0)
        np.testing.assert_allclose(got[name], want, rtol=0, atol=bound + 1e-6)
    api.close()
