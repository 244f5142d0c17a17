"""kill -9 of the coordinator at each state of a round: collecting (some
updates acknowledged, one in flight), aggregating (the new version written
but not committed) and just after the commit. A new process on the same
Postgres, Redis and blob store finishes the round: no acknowledged update is
lost or counted twice, no client ever sees a 500, and the model is the
weighted mean of exactly the acknowledged updates."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest

from fedface_common.tensors import decode
from tests.support.faults import EXACT_MEAN, AnswerLog
from tests.support.fleet import (
    ADMIN,
    Device,
    delta,
    delta_bytes,
    enroll,
    get_round,
    register_model,
    start_round,
    tiny_model,
)
from tests.support.live import wait_until
from tests.support.proc import CoordinatorProcess

pytestmark = pytest.mark.faults


@dataclass
class Crashable:
    """One coordinator process at a time over the shared state, its devices, and what each was told."""

    env: dict[str, str]
    logs: Path
    answers: AnswerLog
    processes: list[CoordinatorProcess]
    base: dict[str, np.ndarray] = field(default_factory=tiny_model)
    api: httpx.Client | None = None
    devices: list[Device] = field(default_factory=list)
    acknowledged: dict[int, int] = field(default_factory=dict)  # device index -> update id

    def start(self) -> httpx.Client:
        proc = CoordinatorProcess(self.env, self.logs / f"coordinator-{len(self.processes)}.log").start()
        self.processes.append(proc)
        if self.api is not None:
            self.api.close()
        self.api = self.answers.client(proc.url)
        for d in self.devices:
            d.api = self.api
        return self.api

    def kill(self) -> None:
        self.processes[-1].kill()

    def submit(self, round_id: int, base_version: int, i: int) -> httpx.Response:
        r = self.devices[i].submit(round_id, delta_bytes(i), num_samples=i + 1, base_version=base_version)
        if r.status_code == 200:
            update_id = r.json()["update_id"]
            assert self.acknowledged.setdefault(i, update_id) == update_id  # a replay gets the same answer
        return r

    def assert_committed_with_exactly(self, round_id: int) -> dict[str, Any]:
        """Committed once, as the sample-weighted mean of exactly the acknowledged updates."""
        assert self.api is not None
        wait_until(lambda: get_round(self.api, round_id)["state"] == "committed", timeout=60, what="commit")
        done = get_round(self.api, round_id)
        assert done["accepted"] == len(self.acknowledged)
        versions = [v for v in self.api.get("/v1/admin/models", headers=ADMIN).json() if v["round_id"] == round_id]
        assert [v["id"] for v in versions] == [done["result_version_id"]]
        got = decode(self.api.get(f"/v1/admin/models/{done['result_version_id']}/weights", headers=ADMIN).content)
        n = {i: i + 1 for i in self.acknowledged}
        expected = self.base["layer.weight"] + sum(
            n[i] / sum(n.values()) * delta(i)["layer.weight"] for i in self.acknowledged)
        np.testing.assert_allclose(got["layer.weight"], expected, rtol=1e-5, atol=1e-6)
        return done


@pytest.fixture
def crashable(proc_env: dict[str, str], tmp_path: Path, answers: AnswerLog,
              processes: list[CoordinatorProcess]) -> Iterator[Crashable]:
    c = Crashable(proc_env, tmp_path, answers, processes)
    yield c
    if c.api is not None:
        c.api.close()
    assert answers.server_errors() == []


def _open_round(c: Crashable, devices: int) -> tuple[int, int]:
    api = c.start()
    v1 = register_model(api, c.base)["id"]
    c.devices = enroll(api, devices)
    rnd = start_round(api, target_devices=devices, min_devices=devices, params=EXACT_MEAN)["id"]
    for d in c.devices:
        assert d.check_in()["status"] == "task"
    return rnd, v1


def test_killed_while_collecting(crashable: Crashable) -> None:
    c = crashable
    rnd, v1 = _open_round(c, 4)
    for i in (0, 1):
        assert c.submit(rnd, v1, i).status_code == 200
    # Device 2's upload is in flight when the process dies: it is either in (and acknowledged or
    # not) or not; the device does not know which, and sends it again after the restart.
    in_flight = threading.Thread(target=lambda: _submit_ignoring_transport_errors(c, rnd, v1, 2))
    in_flight.start()
    c.kill()
    in_flight.join(timeout=30)

    api = c.start()
    assert get_round(api, rnd)["state"] == "collecting"
    # Device 0 lost its answer and resends: the same update, answered as before, counted once.
    for i in (0, 2, 3):
        r = c.submit(rnd, v1, i)
        assert r.status_code == 200, r.text
    c.assert_committed_with_exactly(rnd)


def _submit_ignoring_transport_errors(c: Crashable, rnd: int, v1: int, i: int) -> None:
    with suppress(httpx.TransportError):
        c.submit(rnd, v1, i)


@contextmanager
def _served_model_locked(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """Hold the served-model row: the commit of an aggregation waits on it, with the round
    `aggregating` and the new version inserted but not committed."""
    with psycopg.connect(database_url) as conn:
        conn.execute("SELECT version_id FROM served_model WHERE id = 1 FOR UPDATE")
        yield conn
        conn.rollback()


def _waiting_on_a_lock(database_url: str) -> bool:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                           " AND wait_event_type = 'Lock'").fetchone()
    return row is not None and row[0] > 0


def test_killed_while_aggregating(crashable: Crashable, database_url: str) -> None:
    c = crashable
    rnd, v1 = _open_round(c, 3)
    with _served_model_locked(database_url):
        for i in range(3):
            assert c.submit(rnd, v1, i).status_code == 200
        assert c.api is not None
        wait_until(lambda: get_round(c.api, rnd)["state"] == "aggregating", what="the round closing")
        wait_until(lambda: _waiting_on_a_lock(database_url), what="the aggregation's commit waiting")
        c.kill()
    api = c.start()
    c.assert_committed_with_exactly(rnd)
    # The old process's version was never committed: the served one is the new process's.
    served = [v for v in api.get("/v1/admin/models", headers=ADMIN).json() if v.get("served")]
    assert [v["round_id"] for v in served] == [rnd]


def test_killed_just_after_commit(crashable: Crashable) -> None:
    c = crashable
    rnd, v1 = _open_round(c, 3)
    for i in range(3):
        assert c.submit(rnd, v1, i).status_code == 200
    assert c.api is not None
    wait_until(lambda: get_round(c.api, rnd)["state"] == "committed", what="commit")
    c.kill()

    api = c.start()
    done = c.assert_committed_with_exactly(rnd)
    # The committed round stays as it was, and the next one runs from its model.
    assert c.devices[0].check_in()["status"] == "wait"
    c.acknowledged.clear()
    nxt = start_round(api, target_devices=2, min_devices=2, params=EXACT_MEAN)["id"]
    for i in (0, 1):
        assert c.devices[i].check_in()["task"]["model_version"] == done["result_version_id"]
        assert c.submit(nxt, done["result_version_id"], i).status_code == 200
    c.base = decode(api.get(f"/v1/admin/models/{done['result_version_id']}/weights", headers=ADMIN).content)
    c.assert_committed_with_exactly(nxt)
