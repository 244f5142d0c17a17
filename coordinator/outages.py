"""Failures a request did not expect, rendered as problem documents.

An outage of the database, Redis or the blob store is not a bug: the device
should come back later, so it is answered 503 `dependency_unavailable` with
Retry-After, naming the dependency and nothing of its internals (addresses,
driver messages stay in the log). Anything else is a bug: 500 `internal_error`,
also a problem document, its traceback only in the log.

The drivers do not agree on how they report an outage: SQLAlchemy wraps most
of asyncpg's errors but lets a refused connect through as a bare OSError,
redis-py has its own ConnectionError, the blob store's disk reports an errno.
`classify` reads the exception's type first and, for a bare OSError, where it
was raised."""

from __future__ import annotations

import errno
import math
from dataclasses import dataclass

import asyncpg
import botocore.exceptions as boto
import psycopg
import redis.exceptions as redis_errors
import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa

from coordinator.errors import DependencyUnavailable, problem
from coordinator.metrics import ERRORS

log = structlog.get_logger("coordinator.outages")

DATABASE, REDIS, BLOB_STORE = "database", "redis", "blob_store"
_NAMES = {DATABASE: "the database", REDIS: "Redis", BLOB_STORE: "the blob store"}
DEFAULT_RETRY_AFTER_S = 5


@dataclass(frozen=True)
class Outage:
    dependency: str
    out_of_space: bool = False

    @property
    def detail(self) -> str:
        if self.out_of_space:
            return f"{_NAMES[self.dependency]} is out of space; nothing was stored, send it again later"
        return f"{_NAMES[self.dependency]} cannot be reached; try again later"


# The network is gone, or the other end is.
_NETWORK_ERRNOS = frozenset({
    errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EHOSTUNREACH,
    errno.EHOSTDOWN, errno.ENETUNREACH, errno.ENETDOWN, errno.ENETRESET, errno.EPIPE, errno.ENOTCONN,
})
# The blob directory's file system fails or is (re)mounted read-only or gone (NFS): an operator fixes it,
# the same request then succeeds.
_STORAGE_ERRNOS = frozenset({errno.EIO, errno.EROFS, errno.ESTALE})
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})

# Postgres SQLSTATEs that mean "not now" rather than "never": connection exceptions (class 08), the server
# shutting down, crashed or starting up, and too many connections.
_UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300"})

_REDIS_UNAVAILABLE = (redis_errors.ConnectionError, redis_errors.TimeoutError, redis_errors.ReadOnlyError,
                      redis_errors.MasterDownError, redis_errors.TryAgainError, redis_errors.ClusterDownError)

# Which dependency a bare OSError came from, by the module it was raised in (innermost match wins).
_RAISED_IN = (
    ("storage.blobs", BLOB_STORE), ("botocore", BLOB_STORE), ("boto3", BLOB_STORE), ("s3transfer", BLOB_STORE),
    ("asyncpg", DATABASE), ("psycopg", DATABASE), ("aiosqlite", DATABASE), ("sqlalchemy", DATABASE),
    ("storage.db", DATABASE), ("redis", REDIS), ("storage.redis_state", REDIS),
)

# Every type `classify` may recognise; registered once with the app.
HANDLED: tuple[type[Exception], ...] = (
    OSError, sa.SQLAlchemyError, asyncpg.PostgresError, asyncpg.InterfaceError, psycopg.Error,
    redis_errors.RedisError, boto.BotoCoreError, boto.ClientError,
)


def _sqlstate_unavailable(exc: BaseException | None) -> bool:
    state = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    return isinstance(state, str) and (state.startswith("08") or state in _UNAVAILABLE_SQLSTATES)


def _database(exc: BaseException) -> bool:
    if isinstance(exc, sa.DBAPIError):
        return (exc.connection_invalidated or isinstance(exc, sa.OperationalError | sa.InterfaceError)
                or _sqlstate_unavailable(exc.orig))
    if isinstance(exc, sa.TimeoutError):  # no pooled connection came free in time
        return True
    if isinstance(exc, asyncpg.PostgresConnectionError | psycopg.OperationalError | psycopg.InterfaceError):
        return True
    return isinstance(exc, asyncpg.PostgresError | psycopg.Error) and _sqlstate_unavailable(exc)


def _s3(exc: BaseException) -> bool:
    if isinstance(exc, boto.ConnectionError | boto.HTTPClientError):
        return True
    if isinstance(exc, boto.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = exc.response.get("Error", {}).get("Code", "")
        return int(status) >= 500 or code in {"SlowDown", "ServiceUnavailable", "RequestTimeout"}
    return False


def raised_in(exc: BaseException) -> str | None:
    """The dependency whose code raised `exc`, from its traceback (innermost frame first)."""
    modules = []
    tb = exc.__traceback__
    while tb is not None:
        modules.append(str(tb.tb_frame.f_globals.get("__name__", "")))
        tb = tb.tb_next
    for module in reversed(modules):
        for prefix, dependency in _RAISED_IN:
            if module == prefix or module.startswith(prefix + "."):
                return dependency
    return None


def _bare_os_error(exc: OSError) -> Outage | None:
    origin = raised_in(exc)
    if origin in (DATABASE, REDIS):
        return Outage(origin)  # a driver's OSError is its socket's
    if origin == BLOB_STORE:
        if exc.errno in _FULL_ERRNOS:
            return Outage(BLOB_STORE, out_of_space=True)
        network = isinstance(exc, ConnectionError | TimeoutError) or exc.errno in _NETWORK_ERRNOS
        if network or exc.errno in _STORAGE_ERRNOS:
            return Outage(BLOB_STORE)
    return None  # e.g. a missing file or a permission: a bug or a misconfiguration, not an outage


def classify(exc: BaseException) -> Outage | None:
    """The outage `exc` reports, or None when it reports a bug."""
    if _database(exc):
        return Outage(DATABASE)
    if isinstance(exc, _REDIS_UNAVAILABLE):
        return Outage(REDIS)
    if _s3(exc):
        return Outage(BLOB_STORE)
    if isinstance(exc, sa.SQLAlchemyError | redis_errors.RedisError | boto.BotoCoreError | boto.ClientError):
        return None  # typed by its library and not an outage: do not guess from where it was raised
    if isinstance(exc, OSError):
        return _bare_os_error(exc)
    return None


def _retry_after_s(request: Request) -> int:
    ctx = getattr(request.app.state, "ctx", None)
    return int(ctx.settings.outage_retry_after_s) if ctx is not None else DEFAULT_RETRY_AFTER_S


def unavailable_response(outage: Outage, retry_after_s: float) -> JSONResponse:
    err = DependencyUnavailable(outage.detail)
    resp = problem(err.status, err.code, err.title, err.detail, dependency=outage.dependency,
                   retry_after_s=retry_after_s)
    resp.headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))
    return resp


def install_outage_handlers(app: FastAPI) -> None:
    async def _dependency_failed(request: Request, exc: Exception) -> JSONResponse:
        outage = classify(exc)
        if outage is None:
            raise exc  # a bug: on to the 500 handler below, which the server logs with its traceback
        ERRORS.labels(code=DependencyUnavailable.code).inc()
        log.warning("dependency_unavailable", dependency=outage.dependency, out_of_space=outage.out_of_space,
                    path=request.url.path, error=f"{type(exc).__name__}: {exc}"[:300])
        return unavailable_response(outage, _retry_after_s(request))

    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        ERRORS.labels(code="internal_error").inc()
        return problem(500, "internal_error", "Internal server error", None)

    for exc_type in HANDLED:
        app.add_exception_handler(exc_type, _dependency_failed)
    # Starlette calls an Exception handler last, then re-raises so the server logs the traceback.
    app.add_exception_handler(Exception, _internal_error)
