"""The agent around training: state dir, retrying client, the round loop, and
end to end against a live coordinator (`fedface serve`, embedded mode)."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from device_agent.client import ApiError, DeviceClient, NetworkError, RoundGone, encode_metrics, parse_retry_after
from device_agent.photos.load import SkipReason
from device_agent.photos.pipeline import FacePipeline, FolderReport, ReportEntry
from device_agent.runner import Agent, FolderPhotos, Outcome
from device_agent.state import AgentState, Credential, Pending, StateError, default_state_dir, sha256_hex
from fedface_common.face.manifest import ModelManifest
from fedface_common.wire import HEADER_BASE_VERSION, HEADER_CLIENT_METRICS, HEADER_NUM_SAMPLES

from .fixtures import Coordinator, identities, serve_coordinator, tiny_model_bytes

torch.set_num_threads(1)


# --- state dir ----------------------------------------------------------------------------


def test_default_state_dir_is_per_server(tmp_path: Path) -> None:
    assert default_state_dir("http://Example.org:8443/x", tmp_path) == tmp_path / ".fedface-agent/example.org-8443"
    assert default_state_dir("https://example.org", tmp_path).name == "example.org-443"
    assert default_state_dir("127.0.0.1:9000", tmp_path).name == "127.0.0.1-9000"


def test_credential_file_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        state = AgentState(tmp_path / "state")
        state.save_credential(Credential("dev-1", "ffd_secret", "http://x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(state.credential_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.root.stat().st_mode) == 0o700
    assert AgentState(tmp_path / "state").load_credential() == Credential("dev-1", "ffd_secret", "http://x")
    assert not list(state.root.glob(".*.tmp"))  # no temp file left behind


def test_blob_cache_verifies_hashes(tmp_path: Path) -> None:
    state = AgentState(tmp_path)
    data = b"model bytes"
    sha = sha256_hex(data)
    with pytest.raises(StateError):
        state.store_blob(sha256_hex(b"other"), data)
    state.store_blob(sha, data)
    assert state.cached_blob(sha) == data
    state.blob_path(sha).write_bytes(b"bit rot")
    assert state.cached_blob(sha) is None and not state.blob_path(sha).exists()
    with pytest.raises(StateError):
        state.blob_path("../../etc/passwd")


def test_journal_keeps_a_pending_update_until_submitted(tmp_path: Path) -> None:
    state = AgentState(tmp_path)
    body = b"update body"
    pending = Pending(7, 3, 4, sha256_hex(body), "fedface", {"loss_after": 0.1})
    state.save_pending(pending, body)
    assert stat.S_IMODE(state.pending_path.stat().st_mode) == 0o600
    assert AgentState(tmp_path).pending() == (pending, body)
    state.mark_submitted(7, 42)
    assert state.pending() is None and state.last_submitted_round() == 7
    # A torn body (hash mismatch) is dropped, never sent.
    state.save_pending(pending, body)
    state.pending_path.write_bytes(b"torn")
    assert state.pending() is None and not state.pending_path.exists()


def test_private_embedding_round_trip_is_0600(tmp_path: Path) -> None:
    state = AgentState(tmp_path)
    assert state.load_private_embedding() is None
    state.save_private_embedding(np.arange(4, dtype=np.float32))
    assert stat.S_IMODE(state.private_wc_path.stat().st_mode) == 0o600
    np.testing.assert_array_equal(state.load_private_embedding(), np.arange(4, dtype=np.float32))


# --- client: retries and typed errors -----------------------------------------------------

Handler = Callable[[httpx.Request], httpx.Response]


def problem(status: int, code: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json={"type": "x", "title": code, "status": status, "code": code},
                          headers={"content-type": "application/problem+json", **(headers or {})})


def scripted(*responses: httpx.Response | Exception) -> tuple[Handler, list[httpx.Request]]:
    seen: list[httpx.Request] = []
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        item = queue.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    return handler, seen


def client_for(handler: Handler, sleeps: list[float], **kw: Any) -> DeviceClient:
    return DeviceClient("http://coord", "ffd_cred", transport=httpx.MockTransport(handler), sleeper=sleeps.append,
                        **kw)


WAIT = httpx.Response(200, json={"status": "wait", "retry_after_s": 12.0})


def test_5xx_then_success_is_retried_with_growing_backoff() -> None:
    handler, seen = scripted(problem(503, "unavailable"), problem(502, "bad_gateway"), WAIT)
    sleeps: list[float] = []
    answer = client_for(handler, sleeps, backoff_initial_s=1.0).check_in()
    assert answer.status == "wait" and answer.retry_after_s == 12.0
    assert len(seen) == 3 and seen[0].headers["authorization"] == "Bearer ffd_cred"
    assert 0.5 <= sleeps[0] <= 1.0 and 1.0 <= sleeps[1] <= 2.0  # jittered, doubling


def test_4xx_is_not_retried_and_carries_the_code() -> None:
    handler, seen = scripted(problem(409, "round_closed"))
    sleeps: list[float] = []
    with pytest.raises(RoundGone) as info:
        client_for(handler, sleeps).submit(3, b"body", 5, 2)
    assert info.value.code == "round_closed" and info.value.status == 409
    assert len(seen) == 1 and sleeps == []
    handler, seen = scripted(problem(422, "tensor_spec_mismatch"))
    with pytest.raises(ApiError) as err:
        client_for(handler, sleeps).submit(3, b"body", 5, 2)
    assert err.value.code == "tensor_spec_mismatch" and len(seen) == 1 and sleeps == []


def test_429_honours_retry_after() -> None:
    handler, seen = scripted(problem(429, "rate_limited", {"Retry-After": "7"}), WAIT)
    sleeps: list[float] = []
    client_for(handler, sleeps).check_in()
    assert len(sleeps) == 1 and 7.0 <= sleeps[0] <= 7.0 * 1.25 and len(seen) == 2  # never early; jittered


def test_network_errors_are_retried_then_reported() -> None:
    handler, seen = scripted(httpx.ConnectError("refused"), WAIT)
    sleeps: list[float] = []
    assert client_for(handler, sleeps).check_in().status == "wait"
    assert len(seen) == 2 and len(sleeps) == 1
    handler, seen = scripted(*[httpx.ReadTimeout("slow")] * 3)
    with pytest.raises(NetworkError):
        client_for(handler, [], max_attempts=3).check_in()
    assert len(seen) == 3


def test_submit_headers_and_blob_revalidation() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/update"):
            return httpx.Response(200, json={"update_id": 1, "round_id": 3, "sha256": "a" * 64,
                                             "status": "accepted"})
        if request.url.path.endswith("/class-embedding"):
            return problem(404, "not_found")
        return httpx.Response(304) if request.headers.get("if-none-match") else httpx.Response(200, content=b"m")

    client = client_for(handler, [])
    assert client.submit(3, b"body", 5, 2, {"loss": 0.5, "bad": float("nan"), "algo": "fedface"}).update_id == 1
    sub = seen[-1]
    assert sub.headers[HEADER_NUM_SAMPLES] == "5" and sub.headers[HEADER_BASE_VERSION] == "2"
    assert json.loads(sub.headers[HEADER_CLIENT_METRICS]) == {"loss": 0.5, "algo": "fedface"}
    assert client.model_weights(2) == b"m"
    assert client.model_weights(2, "ab" * 32) is None
    assert seen[-1].headers["if-none-match"] == f'"{"ab" * 32}"'
    assert client.class_embedding(3) is None  # 404: the device initialises w_c itself
    assert client.bytes_sent == 4 and client.bytes_received > 0


def test_retry_after_date_and_metrics_limit() -> None:
    now = datetime(2024, 1, 1, tzinfo=UTC)
    assert parse_retry_after("Mon, 01 Jan 2024 00:00:30 GMT", now) == 30.0
    assert parse_retry_after("garbage") is None
    assert len(encode_metrics({f"k{i}": "x" * 200 for i in range(100)})) <= 4096


# --- the loop, against a scripted server --------------------------------------------------


class StaticPhotos:
    def __init__(self, n: int) -> None:
        self.crops = [Image.new("RGB", (112, 112), (i * 40, 90, 160)) for i in range(n)]
        self.report = FolderReport([ReportEntry(f"p{i}.jpg", True) for i in range(n)]
                                   + [ReportEntry("bad.txt", False, SkipReason.NOT_AN_IMAGE)])

    def load(self, manifest: ModelManifest | None = None) -> tuple[list[Image.Image], FolderReport]:
        return self.crops, self.report


def scripted_agent(tmp_path: Path, handler: Handler, sleeps: list[float], **kw: Any) -> Agent:
    state = AgentState(tmp_path / "state")
    state.save_credential(Credential("dev", "ffd_cred", "http://coord"))
    return Agent(client_for(handler, sleeps), state, StaticPhotos(3), sleeper=sleeps.append, **kw)


def test_run_once_gives_up_after_max_wait(tmp_path: Path) -> None:
    handler, seen = scripted(*[httpx.Response(200, json={"status": "wait", "retry_after_s": 2.0})] * 5)
    sleeps: list[float] = []
    agent = scripted_agent(tmp_path, handler, sleeps)
    reports = agent.run(once=True, max_wait_s=5.0)
    assert [r.status for r in reports] == [Outcome.WAIT] * 3 and sleeps == [2.0, 2.0] and len(seen) == 3
    assert agent.run(once=True, max_wait_s=0)[-1].status == Outcome.WAIT and sleeps == [2.0, 2.0]


def test_a_deadline_that_cannot_be_met_drops_the_round(tmp_path: Path) -> None:
    now = datetime(2024, 1, 1, tzinfo=UTC)
    task = {"round_id": 4, "model_version": 1, "model_sha256": "a" * 64,
            "deadline": (now + timedelta(seconds=10)).isoformat(), "has_class_embedding": False,
            "training": {"algorithm": "fedface", "local_epochs": 1, "batch_size": 8, "learning_rate": 0.1}}
    handler, seen = scripted(httpx.Response(200, json={"status": "task", "task": task}))
    agent = scripted_agent(tmp_path, handler, [], now=lambda: now)
    agent.state.record_round_seconds(60.0)  # the last round took a minute; 10 s remain
    report = agent.run_round()
    assert report.status == Outcome.DROPPED and "deadline" in report.message
    assert [r.url.path for r in seen] == ["/v1/check-in"]  # no download, nothing sent
    assert report.photos == {"used": 3, "not_an_image": 1}
    assert report.retry_after_s is not None and report.retry_after_s >= 30  # back after the round, not at once


def test_a_refused_journaled_update_is_dropped_not_resent_forever(tmp_path: Path) -> None:
    handler, seen = scripted(problem(422, "tensor_spec_mismatch"), WAIT)
    agent = scripted_agent(tmp_path, handler, [])
    body = b"stale update"
    agent.state.save_pending(Pending(2, 1, 3, sha256_hex(body), "fedface", {}), body)
    assert agent.run_round().status == Outcome.WAIT
    assert [r.url.path for r in seen] == ["/v1/rounds/2/update", "/v1/check-in"]
    assert agent.state.pending() is None


def test_the_agent_never_imports_the_server() -> None:
    import subprocess
    import sys

    code = ("import sys, device_agent.runner, device_agent.client, device_agent.state, fedface_cli.agent_cmds; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('coordinator', 'storage', 'fastapi', "
            "'sqlalchemy')]; print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


# --- end to end against a live coordinator ------------------------------------------------

IDENTITIES = identities(4)
live = pytest.mark.skipif(isinstance(IDENTITIES, str), reason=str(IDENTITIES))
ROUND = {"algorithm": "fedface", "target_devices": 3, "min_devices": 3, "deadline_s": 120, "local_epochs": 1,
         "batch_size": 8, "learning_rate": 0.05}


class Killed(BaseException):
    """Stands for the process dying: nothing in the agent catches it."""


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    if isinstance(IDENTITIES, str):
        pytest.skip(IDENTITIES)
    with serve_coordinator(tmp_path_factory.mktemp("coordinator")) as coord:
        coord.register_model(tiny_model_bytes())
        yield coord


@pytest.fixture(scope="module")
def pipeline() -> FacePipeline:
    return FacePipeline(112, "aligned")  # one pipeline shared by every agent, as a simulator would


@pytest.fixture
def make_agent(coordinator: Coordinator, pipeline: FacePipeline) -> Iterator[Callable[..., Agent]]:
    clients: list[DeviceClient] = []

    def make(state_dir: Path, photos: Path, token: str | None = None) -> Agent:
        client = DeviceClient(coordinator.url, max_attempts=3, backoff_initial_s=0.01, sleeper=lambda s: None)
        clients.append(client)
        return Agent(client, AgentState(state_dir), FolderPhotos(photos, pipeline), enroll_token=token,
                     label=photos.name, seed=0, sleeper=lambda s: None)

    yield make
    for c in clients:
        c.close()


@live
def test_three_agents_two_fedface_rounds(coordinator: Coordinator, make_agent: Callable[..., Agent],
                                         tmp_path: Path) -> None:
    assert not isinstance(IDENTITIES, str)
    folders = IDENTITIES[:3]
    token = coordinator.token(max_uses=3)  # exactly one use per agent: a re-enrollment would fail
    agents = [make_agent(tmp_path / f"dev{i}", folder, token) for i, folder in enumerate(folders)]
    base = next(m for m in coordinator.models() if m["served"])
    parent = base["id"]
    for rnd_no in range(2):
        rnd = coordinator.start_round(**ROUND)
        reports = [a.run_round() for a in agents]
        for agent, folder, report in zip(agents, folders, reports, strict=True):
            assert report.status == Outcome.SUBMITTED, report
            assert report.round_id == rnd["id"] and report.model_version == parent
            assert report.metrics["wc_initialised"] == (1 if rnd_no == 0 else 0)  # round 2 pulls w_c back
            files = sorted(p.name for p in folder.iterdir())
            assert report.photos == {"used": len(files)}
            assert [e["name"] for e in report.photo_entries if e["used"]] == files
            assert report.bytes_sent > 10_000 and report.bytes_received > 10_000  # model down, update up
            assert agent.state.last_submitted_round() == rnd["id"]
        done = coordinator.wait_round(rnd["id"])
        assert done["state"] == "committed" and done["accepted"] == 3, done
        version = next(m for m in coordinator.models() if m["id"] == done["result_version_id"])
        assert version["parent_id"] == parent and version["round_id"] == rnd["id"] and version["served"]
        parent = version["id"]

    # A restarted agent (new instance, same state dir, no token) keeps its identity.
    device_id = agents[0].device_id
    cred = tmp_path / "dev0" / "credential.json"
    assert stat.S_IMODE(cred.stat().st_mode) == 0o600
    restarted = make_agent(tmp_path / "dev0", folders[0])
    report = restarted.run_round()
    assert report.status == Outcome.WAIT and restarted.device_id == device_id


@live
def test_killed_agent_resumes_its_journaled_update(coordinator: Coordinator, make_agent: Callable[..., Agent],
                                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not isinstance(IDENTITIES, str)
    folder, state_dir = IDENTITIES[3], tmp_path / "dev"
    served = next(m for m in coordinator.models() if m["served"])
    centres = np.random.default_rng(0).normal(size=(30, served["manifest"]["embedding_dim"]))
    coordinator.attach_centres(served["id"], centres / np.linalg.norm(centres, axis=1, keepdims=True))
    rnd = coordinator.start_round(**{**ROUND, "algorithm": "fedface-private", "target_devices": 2,
                                     "min_devices": 1, "params": {"k_negatives": 8}})

    # 1. Killed after journaling the update, before sending it.
    first = make_agent(state_dir, folder, coordinator.token(max_uses=1))

    def die() -> None:
        raise Killed

    monkeypatch.setattr(first, "_before_submit", die)
    with pytest.raises(Killed):
        first.run_round()
    assert first.state.pending() is not None and coordinator.round(rnd["id"])["accepted"] == 0
    assert stat.S_IMODE(first.state.private_wc_path.stat().st_mode) == 0o600  # w_c stays on the device

    # 2. Restarted, it resends; the server accepts but the process dies before the journal knows.
    second = make_agent(state_dir, folder)
    monkeypatch.setattr(second.state, "mark_submitted", lambda *a: die())
    with pytest.raises(Killed):
        second.run_round()
    assert coordinator.round(rnd["id"])["accepted"] == 1

    # 3. Restarted again: the identical bytes are answered with the same success, not a duplicate.
    third = make_agent(state_dir, folder)
    report = third.run_round()
    assert report.status == Outcome.RESUBMITTED and report.update_id is not None, report
    assert third.state.pending() is None and third.state.last_submitted_round() == rnd["id"]
    state = coordinator.round(rnd["id"])
    assert state["accepted"] == 1 and state["rejected"] == 0

    # 4. Nothing left to do for this round: no retraining.
    again = make_agent(state_dir, folder).run_round()
    assert again.status == Outcome.WAIT, again
    coordinator.admin.post(f"/v1/admin/rounds/{rnd['id']}/stop").raise_for_status()
    assert coordinator.wait_round(rnd["id"])["state"] == "committed"


@live
def test_cli_runs_one_round_and_reports_json(coordinator: Coordinator, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedface_cli.main import app

    assert not isinstance(IDENTITIES, str)
    folder = IDENTITIES[0]
    rnd = coordinator.start_round(**{**ROUND, "target_devices": 1, "min_devices": 1})
    args = ["agent", "run", "--server", coordinator.url, "--photos", str(folder), "--state-dir",
            str(tmp_path / "cli"), "--once", "--json", "--aligned", "--device", "cpu", "--seed", "0"]
    result = CliRunner().invoke(app, [*args, "--enroll-token", coordinator.token(max_uses=1)])
    assert result.exit_code == 0, result.output
    [report] = json.loads(result.stdout)
    assert report["status"] == "submitted" and report["round_id"] == rnd["id"]
    assert report["photos"]["used"] == len(list(folder.iterdir())) and report["metrics"]["loss_after"] >= 0
    assert coordinator.wait_round(rnd["id"])["state"] == "committed"
    # Second run: stored credential, no token; nothing to do, so --max-wait 0 exits 3 at the first wait.
    result = CliRunner().invoke(app, [*args, "--max-wait", "0"])
    assert result.exit_code == 3, result.output
    assert json.loads(result.stdout)[0]["status"] == "wait"


def test_agents_sharing_a_blob_cache_can_store_the_same_blob_at_once(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from device_agent.state import AgentState, sha256_hex

    shared = tmp_path / "shared"
    states = [AgentState(tmp_path / f"d{i}", blob_dir=shared) for i in range(8)]
    data = b"model bytes" * 1000
    sha = sha256_hex(data)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda s: s.store_blob(sha, data), states))
    assert all(s.cached_blob(sha) == data for s in states)
