"""Agents through a secure fedface-private round against a live coordinator: each check-in answers one
stage, the device's SecAgg+ state is on disk (0600) before each message leaves, the update is trained,
flattened in the task's order, encoded, masked and uploaded, and the round commits from the sum alone. With
distributed DP each agent noises its update once: the model carries the devices' noise and a resend carries
the same bytes. In a weighted fedface statistics round each agent weighs its update and its moments by its
photo count, keeps its class embedding, and the sum carries the counts' total."""

from __future__ import annotations

import math
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from device_agent.client import ApiError, DeviceClient
from device_agent.photos.pipeline import FacePipeline
from device_agent.runner import Agent, FolderPhotos, Outcome, RoundReport
from device_agent.state import AgentState, SecAggJournal
from fedface_common import tensors
from tests.support.live import wait_until

from .fixtures import Coordinator, identities, serve_coordinator, tiny_model_bytes

IDENTITIES = identities(3)
pytestmark = pytest.mark.skipif(isinstance(IDENTITIES, str), reason=str(IDENTITIES))


def _fleet(coordinator: Coordinator, root: Path) -> tuple[list[DeviceClient], list[Agent]]:
    """One agent per identity folder, enrolled with one token, state under root/<i>, no real waiting."""
    assert not isinstance(IDENTITIES, str)
    pipeline = FacePipeline(112, "aligned")
    token = coordinator.token(max_uses=3)
    clients = [DeviceClient(coordinator.url, max_attempts=3, backoff_initial_s=0.01, sleeper=lambda s: None)
               for _ in IDENTITIES]
    agents = [Agent(c, AgentState(root / str(i)), FolderPhotos(folder, pipeline), enroll_token=token, seed=0,
                    sleeper=lambda s: None) for i, (c, folder) in enumerate(zip(clients, IDENTITIES, strict=True))]
    return clients, agents


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    with serve_coordinator(tmp_path_factory.mktemp("coordinator")) as coord:
        served = coord.register_model(tiny_model_bytes())
        centres = np.random.default_rng(0).normal(size=(30, served["manifest"]["embedding_dim"]))
        coord.attach_centres(served["id"], centres / np.linalg.norm(centres, axis=1, keepdims=True))
        yield coord


def test_agents_complete_a_secure_fedface_private_round(coordinator: Coordinator, tmp_path: Path) -> None:
    assert not isinstance(IDENTITIES, str)
    clients, agents = _fleet(coordinator, tmp_path / "dev")
    rnd = coordinator.start_round(algorithm="fedface-private", target_devices=3, min_devices=3, deadline_s=120,
                                  local_epochs=1, batch_size=8, learning_rate=0.05,
                                  params={"k_negatives": 8, "secagg": {"clip_norm": 5.0, "stage_s": 60}})
    finished: dict[int, RoundReport] = {}

    def everyone_once() -> bool:
        for i, agent in enumerate(agents):
            if i in finished:
                continue
            report = agent.run_round()
            assert report.status in (Outcome.WAIT, Outcome.SUBMITTED), report
            if report.status == Outcome.SUBMITTED:
                finished[i] = report
            journal = agent.state.root / "secagg.json"
            if journal.exists():
                assert stat.S_IMODE(journal.stat().st_mode) == 0o600  # private keys and the self-mask seed
        return len(finished) == len(agents)

    wait_until(everyone_once, timeout=120, interval=0.05, what="every agent through the secure round")
    for agent in agents:
        assert agent.state.last_submitted_round() == rnd["id"]
        assert SecAggJournal(agent.state.root).load(rnd["id"]) is not None
    done = coordinator.wait_round(rnd["id"])
    assert done["state"] == "committed", done
    assert done["metrics"]["secagg"]["survivors"] == 3 and done["accepted"] == 3
    for c in clients:
        c.close()


def test_agents_add_their_noise_share_in_a_distributed_dp_round(coordinator: Coordinator, tmp_path: Path) -> None:
    """Each agent noises its clipped update before masking it; the server adds nothing, so the step's spread
    over the model's coordinates is the devices' noise over the fixed denominator. The first agent's answer to
    its upload is lost: it resends the journaled body, byte for byte, noise and all, and it is counted once."""
    assert not isinstance(IDENTITIES, str)
    clients, agents = _fleet(coordinator, tmp_path / "dp")
    sent: list[bytes] = []
    real_submit = clients[0].submit

    def lose_the_first_answer(round_id: int, body: bytes, *args: Any, **kwargs: Any) -> Any:
        sent.append(body)
        answer = real_submit(round_id, body, *args, **kwargs)
        if len(sent) == 1:
            raise ApiError(503, "unavailable", "the answer was lost on the way back")
        return answer

    clients[0].submit = lose_the_first_answer  # type: ignore[method-assign]
    z, clip = 1.0, 5.0
    rnd = coordinator.start_round(
        algorithm="fedface-private", target_devices=3, min_devices=3, over_selection=1.0, deadline_s=120,
        local_epochs=1, batch_size=8, learning_rate=0.05,
        params={"k_negatives": 8, "secagg": {"clip_norm": clip, "stage_s": 60},
                "dp": {"mode": "distributed", "noise_multiplier": z, "clip": clip}})
    base = tensors.decode(coordinator.admin.get(f"/v1/admin/models/{rnd['base_version_id']}/weights").content)
    finished: set[int] = set()

    def everyone_once() -> bool:
        for i, agent in enumerate(agents):
            if i in finished:
                continue
            try:
                report = agent.run_round()
            except ApiError as exc:
                assert exc.retryable and i == 0, exc
                continue
            assert report.status in (Outcome.WAIT, Outcome.SUBMITTED, Outcome.RESUBMITTED), report
            if report.status == Outcome.SUBMITTED:
                finished.add(i)
        return len(finished) == len(agents)

    wait_until(everyone_once, timeout=120, interval=0.05, what="every agent through the distributed DP round")
    done = coordinator.wait_round(rnd["id"])
    assert done["state"] == "committed", done
    assert len(sent) == 2 and sent[0] == sent[1]  # the resend is the journaled body, not a fresh draw
    assert done["accepted"] == 3 and done["metrics"]["secagg"]["survivors"] == 3
    dp = done["metrics"]["dp"]
    m = dp["min_survivors"]
    assert m == 3 and dp["mode"] == "distributed" and dp["server_noise_stddev"] == 0
    assert dp["device_noise_stddev"] == pytest.approx(z * clip / math.sqrt(m)) and dp["epsilon"] > 0

    new = tensors.decode(coordinator.admin.get(f"/v1/admin/models/{done['result_version_id']}/weights").content)
    step = np.concatenate([(new[k].astype(np.float64) - base[k]).ravel() for k in sorted(base)
                           if base[k].dtype.kind == "f"])
    assert step.size == done["metrics"]["secagg"]["vector_length"]
    # The mean of 3 clipped updates is at most 5 long over 82,112 coordinates (an RMS below 0.02); the noise
    # on it is z C sqrt(3 / m) / 3 = 1.67 per coordinate, its sample std known to within 0.25% (one sd).
    assert float(step.std()) == pytest.approx(z * clip * math.sqrt(3 / m) / 3, rel=0.03)
    for c in clients:
        c.close()


def test_agents_weigh_their_moments_in_a_secure_statistics_round(coordinator: Coordinator, tmp_path: Path) -> None:
    assert not isinstance(IDENTITIES, str)
    coordinator.register_model(tiny_model_bytes())  # the moments of the model as built, not of a noised one
    clients, agents = _fleet(coordinator, tmp_path / "st")
    # The folders hold 3 or more photos: weights in (3/4, 1]. A cap far above the counts would cost precision
    # (each device's values shrink by its weight before encoding).
    cap = 4
    rnd = coordinator.start_round(
        algorithm="fedface", target_devices=3, min_devices=3, deadline_s=120, local_epochs=1, batch_size=8,
        learning_rate=0.05, params={"embedding_stats": True, "secagg": {
            "clip_norm": 5.0, "stage_s": 60, "max_weight": cap, "statistics_clip_norm": 100.0}})
    base = tensors.decode(coordinator.admin.get(f"/v1/admin/models/{rnd['base_version_id']}/weights").content)
    counts: dict[int, int] = {}
    finished: set[int] = set()

    def everyone_once() -> bool:
        for i, agent in enumerate(agents):
            if i in finished:
                continue
            report = agent.run_round()
            assert report.status in (Outcome.WAIT, Outcome.SUBMITTED), report
            if "num_samples" in report.metrics:  # the masked-input stage's report: the round it trained
                counts[i] = int(report.metrics["num_samples"])
            if report.status == Outcome.SUBMITTED:
                finished.add(i)
        return len(finished) == len(agents)

    wait_until(everyone_once, timeout=120, interval=0.05, what="every agent through the secure statistics round")
    done = coordinator.wait_round(rnd["id"])
    assert done["state"] == "committed", done
    secagg = done["metrics"]["secagg"]
    assert secagg["survivors"] == 3 and secagg["weights"] == "samples" and len(counts) == 3
    assert secagg["total_weight"] * cap == pytest.approx(sum(min(c, cap) for c in counts.values()), abs=1e-6)
    assert 0 < secagg["statistics_mean_norm"] < 100 and secagg["statistics_error_bound_mean"] < 1e-6
    new = tensors.decode(coordinator.admin.get(f"/v1/admin/models/{done['result_version_id']}/weights").content)
    assert not np.allclose(new["bn_embedding.running_mean"], base["bn_embedding.running_mean"])
    # No class embedding reached the server: none was folded (no cosines of submitted rows) and W holds none.
    assert "submitted_mean_offdiag_cos" not in done["metrics"] and "w_rows" not in done["metrics"]
    for c in clients:
        c.close()
