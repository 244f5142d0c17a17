"""An upload is cut off at max_upload_s, body included (408 upload_timeout), and
leaves no staging file: the blob collector's grace period is measured against
this bound. Over a raw socket, so that the client can stall mid-body."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import httpx
import pytest

from coordinator.settings import Settings
from fedface_common.wire import HEADER_BASE_VERSION, HEADER_NUM_SAMPLES
from storage.blobs import LocalBlobStore
from tests.conftest import ADMIN_TOKEN
from tests.support.fleet import enroll, register_model, start_round
from tests.support.live import LiveServer, wait_until

DECLARED = 3 * 1024 * 1024
SENT = 1536 * 1024  # past one hand-off to the writer's thread, so a staging file exists


@pytest.fixture
def slow_server(settings: Settings) -> Iterator[LiveServer]:
    srv = LiveServer(settings.model_copy(update={"max_upload_s": 0.5}))
    srv.start()
    yield srv
    srv.stop()


def _stalled_upload(srv: LiveServer, path: str, headers: dict[str, str]) -> tuple[int, dict[str, object]]:
    """Declare DECLARED bytes, send SENT of them, then wait for the coordinator's answer."""
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/octet-stream",
             f"Content-Length: {DECLARED}", *(f"{k}: {v}" for k, v in headers.items())]
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + b"\0" * SENT)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < _length(answer):
            chunk = sock.recv(65536)  # the socket's timeout is the deadline
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


def _length(answer: bytes) -> int:
    head = answer.partition(b"\r\n\r\n")[0].decode("latin-1").lower()
    return next((int(line.split(":", 1)[1]) for line in head.split("\r\n") if line.startswith("content-length:")),
                0)


def _staged(settings: Settings) -> list[str]:
    store = LocalBlobStore(settings.resolved_blob_dir)
    return [p.name for p in store.staging_dir.iterdir() if p.name.startswith(store.staging_prefix)]


def test_a_stalled_model_upload_is_cut_off(slow_server: LiveServer, settings: Settings) -> None:
    status, problem = _stalled_upload(slow_server, "/v1/admin/models", {"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert (status, problem["code"]) == (408, "upload_timeout"), problem
    wait_until(lambda: _staged(settings) == [], what="the staging file's removal")


def test_a_stalled_update_is_cut_off(slow_server: LiveServer, settings: Settings) -> None:
    with httpx.Client(base_url=slow_server.url, timeout=30) as api:
        version = register_model(api)
        (device,) = enroll(api, 1)
        rnd = start_round(api, target_devices=1, min_devices=1)
        assert device.check_in()["status"] == "task"
    status, problem = _stalled_upload(slow_server, f"/v1/rounds/{rnd['id']}/update", {
        **device.auth, HEADER_NUM_SAMPLES: "1", HEADER_BASE_VERSION: str(version["id"])})
    assert (status, problem["code"]) == (408, "upload_timeout"), problem
    wait_until(lambda: _staged(settings) == [], what="the staging file's removal")
