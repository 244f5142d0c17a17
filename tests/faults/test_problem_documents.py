"""Which failures are outages (503, naming the dependency) and which are bugs
(500): both answered as problem documents, neither showing internals."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

import asyncpg
import botocore.exceptions as boto
import httpx
import pytest
import redis.exceptions as redis_errors
from sqlalchemy import exc as sa

from coordinator.outages import BLOB_STORE, DATABASE, REDIS, Outage, classify
from coordinator.settings import Settings
from tests.support.faults import LEAKS
from tests.support.live import LiveServer

pytestmark = pytest.mark.faults


def raised_from(module: str) -> Callable[[BaseException], BaseException]:
    """Raise `exc` from a function of `module`, and return it with that traceback."""
    namespace: dict[str, Any] = {"__name__": module}
    exec(compile("def throw(exc):\n    raise exc\n", f"<{module}>", "exec"), namespace)

    def caught(exc: BaseException) -> BaseException:
        try:
            namespace["throw"](exc)
        except BaseException as e:
            return e
        raise AssertionError("not raised")

    return caught


def _client_error(status: int, code: str) -> boto.ClientError:
    return boto.ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


@pytest.mark.parametrize(("exc", "expected"), [
    (sa.OperationalError("SELECT 1", {}, Exception("server closed the connection")), Outage(DATABASE)),
    (sa.InterfaceError("SELECT 1", {}, Exception("connection is closed")), Outage(DATABASE)),
    (sa.DBAPIError("SELECT 1", {}, Exception("x"), connection_invalidated=True), Outage(DATABASE)),
    (sa.TimeoutError("QueuePool limit reached"), Outage(DATABASE)),
    (asyncpg.exceptions.CannotConnectNowError("the database system is starting up"), Outage(DATABASE)),
    (raised_from("asyncpg.connect_utils")(ConnectionRefusedError(errno.ECONNREFUSED, "refused")), Outage(DATABASE)),
    (redis_errors.ConnectionError("Connection closed by server."), Outage(REDIS)),
    (redis_errors.TimeoutError("Timeout reading from socket"), Outage(REDIS)),
    (raised_from("storage.blobs.base")(OSError(errno.ENOSPC, "No space left on device")),
     Outage(BLOB_STORE, out_of_space=True)),
    (raised_from("storage.blobs.local")(OSError(errno.EIO, "Input/output error")), Outage(BLOB_STORE)),
    (boto.EndpointConnectionError(endpoint_url="http://s3"), Outage(BLOB_STORE)),
    (_client_error(503, "SlowDown"), Outage(BLOB_STORE)),
    # Bugs and refusals, not outages:
    (sa.IntegrityError("INSERT", {}, Exception("duplicate key")), None),
    (sa.ProgrammingError("SELECT", {}, Exception("syntax error")), None),
    (redis_errors.ResponseError("WRONGTYPE"), None),
    (redis_errors.WatchError("watched key changed"), None),
    (raised_from("storage.blobs.local")(FileNotFoundError(errno.ENOENT, "No such file")), None),
    (raised_from("coordinator.services.intake")(OSError(errno.ENOSPC, "No space left on device")), None),
    (_client_error(403, "AccessDenied"), None),
    (RuntimeError("a bug"), None),
])
def test_classify(exc: BaseException, expected: Outage | None) -> None:
    assert classify(exc) == expected


def test_a_bug_is_a_500_problem_document_without_internals(settings: Settings) -> None:
    srv = LiveServer(settings, run_driver=False)

    async def boom() -> None:
        raise RuntimeError("secret internals at /srv/fedface: Traceback of a bug")

    async def missing_file() -> None:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/srv/fedface/x")

    srv.app.add_api_route("/v1/boom", boom)
    srv.app.add_api_route("/v1/missing-file", missing_file)
    srv.start()
    try:
        for path in ("/v1/boom", "/v1/missing-file"):
            # One connection each: the server closes a connection after a request that raised.
            with httpx.Client(base_url=srv.url) as api:
                r = api.get(path)
                assert r.status_code == 500 and r.headers["content-type"].startswith("application/problem+json")
                assert r.json()["code"] == "internal_error" and r.json()["status"] == 500
                assert "retry-after" not in r.headers
                leaked = [w for w in (*LEAKS, "secret", "/srv/", "RuntimeError", "No such file") if w in r.text]
                assert not leaked, r.text
    finally:
        srv.stop()
