"""Agents through a secure fedface-private round against a live coordinator: each check-in answers one
stage, the device's SecAgg+ state is on disk (0600) before each message leaves, the update is trained,
flattened in the task's order, encoded, masked and uploaded, and the round commits from the sum alone."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from device_agent.client import DeviceClient
from device_agent.photos.pipeline import FacePipeline
from device_agent.runner import Agent, FolderPhotos, Outcome, RoundReport
from device_agent.state import AgentState, SecAggJournal
from tests.support.live import wait_until

from .fixtures import Coordinator, identities, serve_coordinator, tiny_model_bytes

IDENTITIES = identities(3)
pytestmark = pytest.mark.skipif(isinstance(IDENTITIES, str), reason=str(IDENTITIES))


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    with serve_coordinator(tmp_path_factory.mktemp("coordinator")) as coord:
        served = coord.register_model(tiny_model_bytes())
        centres = np.random.default_rng(0).normal(size=(30, served["manifest"]["embedding_dim"]))
        coord.attach_centres(served["id"], centres / np.linalg.norm(centres, axis=1, keepdims=True))
        yield coord


def test_agents_complete_a_secure_fedface_private_round(coordinator: Coordinator, tmp_path: Path) -> None:
    assert not isinstance(IDENTITIES, str)
    pipeline = FacePipeline(112, "aligned")
    token = coordinator.token(max_uses=3)
    clients = [DeviceClient(coordinator.url, max_attempts=3, backoff_initial_s=0.01, sleeper=lambda s: None)
               for _ in IDENTITIES]
    agents = [Agent(c, AgentState(tmp_path / f"dev{i}"), FolderPhotos(folder, pipeline), enroll_token=token,
                    seed=0, sleeper=lambda s: None) for i, (c, folder) in enumerate(zip(clients, IDENTITIES,
                                                                                         strict=True))]
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
