"""The coordinator's input edges, seen from outside over real HTTP: free text,
integer headers and ids, JSON bodies and the answers to all of them. Every
refusal is a problem document with a stable code, and changes nothing in the
database or the blob store."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import Engine, create_engine, text

from fedface_common.wire import HEADER_CLIENT_METRICS, HEADER_NUM_SAMPLES, Problem
from tests.support.fleet import (
    ADMIN,
    Device,
    delta_bytes,
    enroll,
    issue_token,
    model_bytes,
    register_model,
    start_round,
    tiny_model,
)
from tests.support.live import LiveServer


class Db:
    """Reads of the coordinator's database, to check that a refusal changed nothing."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def scalar(self, sql: str) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(text(sql)).scalar_one()

    def count(self, table: str) -> int:
        return int(self.scalar(f"SELECT count(*) FROM {table}"))


@pytest.fixture
def db(server: LiveServer) -> Iterator[Db]:
    url = str(server.settings.database_url).replace("postgresql://", "postgresql+psycopg://")
    engine = create_engine(url)
    yield Db(engine)
    engine.dispose()


def _blob_files(server: LiveServer) -> set[Path]:
    root = server.settings.resolved_blob_dir
    return {p for p in root.rglob("*") if p.is_file() and "tmp" not in p.parts}


def _problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text[:500]
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body = r.json()
    Problem.model_validate(body)
    assert body["code"] == code and body["status"] == status and body["title"], body
    return dict(body)


@pytest.fixture
def round_setup(api: httpx.Client) -> dict[str, Any]:
    """A served model, an open round and a device with its task."""
    version = register_model(api)
    (dev,) = enroll(api, 1)
    rnd = start_round(api, target_devices=1, min_devices=1, over_selection=1.0)
    assert dev.check_in()["status"] == "task"
    return {"version": version["id"], "round": rnd["id"], "dev": dev}


# 1. Control characters in free text -----------------------------------------------------------------


def test_control_characters_in_an_enrollment_are_refused_and_the_token_is_kept(api: httpx.Client, db: Db) -> None:
    token = issue_token(api, max_uses=1)
    for body, field, reason in [
        ({"token": token, "label": "phone\u0000one"}, "label", "control characters"),
        ({"token": token, "label": "phone\x1b[2Jone"}, "label", "control characters"),
        ({"token": token, "label": "phone\u0085one"}, "label", "control characters"),
        ({"token": token + "\u0000", "label": "phone"}, "token", "control characters"),
        # A lone surrogate has no UTF-8 form (json.dumps sends it escaped, as "\ud800").
        ({"token": token + "\ud800", "label": "phone"}, "token", "unicode"),
    ]:
        r = api.post("/v1/enroll", content=json.dumps(body), headers={"Content-Type": "application/json"})
        problem = _problem(r, 422, "validation_error")
        assert f"body.{field}" in problem["detail"] and reason in problem["detail"], problem
        assert problem["errors"][0]["loc"] == ["body", field]
    assert db.scalar("SELECT uses FROM enrollment_tokens") == 0
    assert db.count("devices") == 0
    # The token still works, on the same keep-alive client.
    assert api.post("/v1/enroll", json={"token": token, "label": "phone one"}).status_code == 201
    assert db.scalar("SELECT uses FROM enrollment_tokens") == 1


def _model_with(**manifest: str) -> bytes:
    return model_bytes(tiny_model(), extra_manifest=manifest)


ADMIN_TEXT_CASES: dict[str, tuple[str, str, dict[str, Any], int, str]] = {
    # name: (method, path, request kwargs, status, code)
    "token note": ("POST", "/v1/admin/enrollment-tokens", {"json": {"note": "batch\u00001"}}, 422,
                   "validation_error"),
    "round algorithm": ("POST", "/v1/admin/rounds", {"json": {"algorithm": "fedavg\u0000"}}, 422,
                        "validation_error"),
    "round parameter": ("POST", "/v1/admin/rounds", {"json": {"algorithm": "fedavg", "params": {"k\u0000": 1}}},
                        422, "validation_error"),
    "model note": ("POST", "/v1/admin/models", {"params": {"note": "v2\u0000"}, "content": _model_with()}, 422,
                   "validation_error"),
    "model manifest": ("POST", "/v1/admin/models", {"content": _model_with(source="lab\u0000")}, 422,
                       "invalid_metadata"),
    "tensor name": ("POST", "/v1/admin/models",
                    {"content": model_bytes({"layer\u0000weight": np.zeros(3, np.float32)})}, 422,
                    "invalid_tensors"),
}


@pytest.mark.parametrize("case", sorted(ADMIN_TEXT_CASES))
def test_control_characters_in_admin_text_are_refused_before_any_write(case: str, api: httpx.Client, db: Db,
                                                                        server: LiveServer) -> None:
    method, path, kwargs, status, code = ADMIN_TEXT_CASES[case]
    served = register_model(api)
    before = _blob_files(server)
    problem = _problem(api.request(method, path, headers=ADMIN, **kwargs), status, code)
    assert "control character" in problem["detail"], problem
    assert db.count("enrollment_tokens") == 0
    assert db.count("rounds") == 0
    assert db.scalar(f"SELECT count(*) FROM model_versions WHERE id != {served['id']}") == 0
    assert _blob_files(server) == before


def test_a_manifest_keeps_the_line_breaks_of_its_licence_text(api: httpx.Client) -> None:
    """Imported networks carry their licence in the manifest; a document's line breaks and tabs are text."""
    licence = "MIT License\n\nCopyright (c) 2018\r\n\tPermission is hereby granted"
    r = api.post("/v1/admin/models", headers=ADMIN, content=_model_with(licence=licence))
    assert r.status_code == 201, r.text
    assert r.json()["manifest"]["licence"] == licence


def test_control_characters_in_client_metrics_are_refused(round_setup: dict[str, Any], db: Db,
                                                           server: LiveServer) -> None:
    before = _blob_files(server)
    dev: Device = round_setup["dev"]
    r = dev.submit(round_setup["round"], delta_bytes(1), base_version=round_setup["version"],
                   extra_headers={HEADER_CLIENT_METRICS: json.dumps({"loss": 0.5, "note": "a\u0000b"})})
    assert "control characters" in _problem(r, 422, "invalid_metadata")["detail"]
    assert db.count("updates") == 0
    assert _blob_files(server) == before


# 2. Integer headers and ids: plain decimal only ----------------------------------------------------

LOOSE_INTEGERS = ["1_0", "+5", "05", "00", "-0", "5.0", "1e1", "0x5", "1 0", "9" * 19]


@pytest.mark.parametrize("value", LOOSE_INTEGERS)
def test_loose_sample_counts_are_refused(value: str, round_setup: dict[str, Any], db: Db,
                                         server: LiveServer) -> None:
    before = _blob_files(server)
    dev: Device = round_setup["dev"]
    r = dev.submit(round_setup["round"], delta_bytes(1), base_version=round_setup["version"],
                   extra_headers={HEADER_NUM_SAMPLES: value})
    _problem(r, 422, "invalid_num_samples")
    assert db.count("updates") == 0
    assert _blob_files(server) == before


def test_loose_base_versions_are_refused_and_the_plain_one_is_taken(round_setup: dict[str, Any], db: Db) -> None:
    dev: Device = round_setup["dev"]
    version = round_setup["version"]
    for value in (f"+{version}", f"0{version}", f"{version}_0", f"{version}.0", f"{version}x"):
        r = dev.submit(round_setup["round"], delta_bytes(1), base_version=value)
        _problem(r, 422, "invalid_metadata")
        assert db.count("updates") == 0, value
    ok = dev.submit(round_setup["round"], delta_bytes(1), base_version=str(version))
    assert ok.status_code == 200, ok.text
    assert db.count("updates") == 1


def test_ids_in_paths_are_plain_decimal(api: httpx.Client) -> None:
    version = register_model(api)["id"]
    assert api.get(f"/v1/admin/models/{version}", headers=ADMIN).status_code == 200
    for spelling in (f"+{version}", f"0{version}", f"{version}_0", f"{version}.0"):
        r = api.get(f"/v1/admin/models/{spelling}", headers=ADMIN)
        assert "plain decimal" in _problem(r, 422, "validation_error")["detail"]


@pytest.mark.parametrize("path", ["/v1/admin/rounds", "/v1/admin/audit"])
def test_page_sizes_in_queries_are_plain_decimal(api: httpx.Client, path: str) -> None:
    assert api.get(path, params={"limit": "10"}, headers=ADMIN).status_code == 200
    for spelling in ("1_0", "+10", "010", "10.0", " 10"):
        r = api.get(path, params={"limit": spelling}, headers=ADMIN)
        assert "plain decimal" in _problem(r, 422, "validation_error")["detail"], spelling


# 3. A device cannot probe which model versions exist ------------------------------------------------


def test_a_missing_version_and_one_outside_the_task_get_the_same_answer(api: httpx.Client) -> None:
    served = register_model(api)["id"]
    other = register_model(api, tiny_model(seed=1), serve=False)["id"]
    (dev,) = enroll(api, 1)
    start_round(api, target_devices=1, over_selection=1.0)
    assert dev.check_in()["task"]["model_version"] == served
    assert api.get(f"/v1/models/{served}/weights", headers=dev.auth).status_code == 200
    missing = 4242
    answers = {vid: api.get(f"/v1/models/{vid}/weights", headers=dev.auth) for vid in (other, missing)}
    problems = {vid: _problem(r, 403, "forbidden") for vid, r in answers.items()}
    # The same problem but for the id the device itself sent.
    assert problems[other]["detail"].replace(str(other), "N") == problems[missing]["detail"].replace(str(missing), "N")
    assert {k: v for k, v in problems[other].items() if k != "detail"} == \
        {k: v for k, v in problems[missing].items() if k != "detail"}


# 5. Bounded bodies and bounded answers ---------------------------------------------------------------


def test_a_json_body_over_the_limit_is_refused_unread(api: httpx.Client, server: LiveServer, db: Db) -> None:
    limit = server.settings.max_json_body_bytes
    body = json.dumps({"note": "n", "pad": "x" * (2 * limit)}).encode()
    r = api.post("/v1/admin/enrollment-tokens", content=body, headers={**ADMIN, "Content-Type": "application/json"})
    assert _problem(r, 413, "payload_too_large")["limit"] == limit
    assert len(r.content) < 1024

    def chunks() -> Iterator[bytes]:  # chunked transfer: no Content-Length to refuse by
        yield b'{"note": "'
        for _ in range(2 * limit // 65536 + 1):
            yield b"x" * 65536
        yield b'"}'

    r = api.post("/v1/admin/enrollment-tokens", content=chunks(), headers={**ADMIN, "Content-Type": "application/json"})
    _problem(r, 413, "payload_too_large")
    r = api.post("/v1/enroll", content=body, headers={"Content-Type": "application/json"})
    _problem(r, 413, "payload_too_large")
    assert db.count("enrollment_tokens") == 0
    # Uploads keep their own (larger) limits: a model body well over the JSON limit is taken.
    big_model = model_bytes({"layer.weight": np.zeros(limit // 4 + 1024, np.float32)})
    assert api.post("/v1/admin/models", content=big_model, headers=ADMIN).status_code == 201


def test_validation_errors_are_bounded_and_never_echo_the_input(api: httpx.Client, db: Db) -> None:
    keys = 10_000  # about 0.9 MB: under the body limit, one error per key
    flood = {f"{i:05d}-{'k' * 80}": 0 for i in range(keys)}
    r = api.post("/v1/admin/enrollment-tokens", json=flood, headers=ADMIN)
    problem = _problem(r, 422, "validation_error")
    assert problem["error_count"] == keys
    assert 1 <= len(problem["errors"]) <= 20
    assert all(len(str(part)) <= 64 for e in problem["errors"] for part in e["loc"])
    assert len(r.content) < 16 * 1024, len(r.content)
    secret_ish = "S3CR3T" * 50_000
    r = api.post("/v1/admin/enrollment-tokens", json={"note": secret_ish}, headers=ADMIN)
    _problem(r, 422, "validation_error")
    assert "S3CR3T" not in r.text and len(r.content) < 2048
    assert db.count("enrollment_tokens") == 0


def test_refusals_quote_no_large_input(api: httpx.Client, db: Db) -> None:
    register_model(api)
    # Strategies refuse unknown parameters, quoting them: the quote is clipped.
    r = api.post("/v1/admin/rounds", json={"algorithm": "fedavg", "params": {"pad": "p" * 500_000}}, headers=ADMIN)
    _problem(r, 422, "invalid_config")
    assert len(r.content) < 2048, len(r.content)
    assert db.count("rounds") == 0


def _raw_post(server: LiveServer, path: str, body: bytes, content_length: str,
              headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """A request with a Content-Length as sent, which HTTP clients would not write."""
    lines = [f"POST {path} HTTP/1.1", "Host: test", f"Content-Length: {content_length}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, payload = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    assert status < 400 or b"application/problem+json" in head, head
    return status, json.loads(payload)


def test_a_content_length_with_a_leading_zero_is_refused(server: LiveServer, db: Db) -> None:
    body = json.dumps({"max_uses": 1}).encode()
    json_headers = {**ADMIN, "Content-Type": "application/json"}
    status, problem = _raw_post(server, "/v1/admin/enrollment-tokens", body, f"0{len(body)}", json_headers)
    assert (status, problem["code"]) == (400, "invalid_header")
    model = model_bytes(tiny_model())
    status, problem = _raw_post(server, "/v1/admin/models", model, f"0{len(model)}", ADMIN)
    assert (status, problem["code"]) == (400, "invalid_header")
    assert db.count("enrollment_tokens") == 0 and db.count("model_versions") == 0
    status, _ = _raw_post(server, "/v1/admin/enrollment-tokens", body, str(len(body)), json_headers)
    assert status == 201


# 6. Every body that does not parse answers a problem document ---------------------------------------

UNPARSEABLE = {
    "deep array": b"[" * 100_000 + b"]" * 100_000,
    "deep object": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "truncated": b'{"token": "ffe_abc',
    "not utf-8": b'{"token": "\xff\xfe"}',
    "huge integer": b'{"max_uses": ' + b"9" * 5000 + b"}",
}


@pytest.mark.parametrize("case", sorted(UNPARSEABLE))
@pytest.mark.parametrize("path", ["/v1/enroll", "/v1/admin/enrollment-tokens"])
def test_unparseable_bodies_answer_a_problem_document(case: str, path: str, api: httpx.Client, db: Db) -> None:
    r = api.post(path, content=UNPARSEABLE[case], headers={**ADMIN, "Content-Type": "application/json"})
    problem = _problem(r, 400, "invalid_json")
    assert len(r.content) < 1024 and problem["detail"]
    assert db.count("enrollment_tokens") == 0 and db.count("devices") == 0


def test_unknown_paths_and_methods_answer_problem_documents(api: httpx.Client) -> None:
    _problem(api.get("/v1/no-such-call"), 404, "not_found")
    r = api.delete("/v1/check-in")
    _problem(r, 405, "method_not_allowed")
    assert "POST" in r.headers["allow"]


# 7. OpenAPI declares the problem documents -----------------------------------------------------------

DEVICE_STATUSES = {"400", "401", "403", "404", "409", "413", "422", "429", "503"}
ADMIN_STATUSES = {"400", "401", "404", "409", "413", "422", "503"}


def test_openapi_lists_each_routes_problem_responses(api: httpx.Client) -> None:
    doc = api.get("/openapi.json").json()
    problem_schema = doc["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "code"} <= set(problem_schema["required"])
    assert "ProblemError" in doc["components"]["schemas"]
    operations = [(path, op) for path, ops in doc["paths"].items() if path.startswith("/v1/") for op in ops.values()]
    assert len(operations) >= 20
    for path, op in operations:
        expected = ADMIN_STATUSES if path.startswith("/v1/admin/") else DEVICE_STATUSES
        assert expected <= set(op["responses"]), (path, sorted(op["responses"]))
        for status in expected:
            assert op["responses"][status]["content"] == {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}, (path, status)
    # FastAPI's default 422 body (HTTPValidationError) is not what the coordinator sends.
    assert "HTTPValidationError" not in json.dumps(doc)
