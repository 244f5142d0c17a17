"""Typed HTTP client of the coordinator's device API, with retries.

Retried: network failures, 5xx and 429 (503 is what the coordinator answers
while its database, Redis or blob store is down). After Retry-After when the
server sends one (capped, plus up to a quarter more at random), else after
exponential backoff with jitter, so that a fleet does not return in
lock-step. Never retried: every other 4xx, since asking again cannot change
the answer. Retrying a submission is safe: the server answers
a retry of identical bytes with the same success."""

from __future__ import annotations

import json
import random
import ssl
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import httpx
import numpy as np
from pydantic import BaseModel
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from fedface_common import tensors
from fedface_common.secagg.task import SecAggAck
from fedface_common.wire import (
    API_PREFIX,
    CLASS_EMBEDDING_TENSOR,
    HEADER_BASE_VERSION,
    HEADER_CLIENT_METRICS,
    HEADER_NUM_SAMPLES,
    CheckInResponse,
    EnrollRequest,
    EnrollResponse,
    SubmitResponse,
)

M = TypeVar("M", bound=BaseModel)
USER_AGENT = "fedface-agent/0.1"
MAX_METRICS_BYTES = 4096
# How much later than its Retry-After a device may come back, as a fraction of it.
RETRY_AFTER_JITTER = 0.25


class ApiError(Exception):
    """The server refused a request; `code` is the problem document's stable code."""

    def __init__(self, status: int, code: str, detail: str | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(f"{status} {code}" + (f": {detail}" if detail else ""))
        self.status = status
        self.code = code
        self.detail = detail
        self.retry_after_s = retry_after_s

    @property
    def retryable(self) -> bool:
        return self.status >= 500 or self.status == 429


class Unauthorized(ApiError):
    """401/403 on credentials: the stored credential is wrong or revoked; re-enroll."""


class NotFound(ApiError):
    pass


class RoundGone(ApiError):
    """The round no longer takes this update (round_closed, stale_base_version,
    not_selected, duplicate_submission): drop it and check in again."""


class RateLimited(ApiError):
    pass


class ServerError(ApiError):
    pass


class NetworkError(Exception):
    """The server could not be reached (after retries)."""


_BY_CODE: dict[str, type[ApiError]] = {
    "unauthorized": Unauthorized,
    "credential_revoked": Unauthorized,
    "invalid_enrollment_token": Unauthorized,
    "round_closed": RoundGone,
    "stale_base_version": RoundGone,
    "not_selected": RoundGone,
    "duplicate_submission": RoundGone,
    "rate_limited": RateLimited,
}


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def error_from_response(resp: httpx.Response) -> ApiError:
    code, detail = f"http_{resp.status_code}", None
    try:
        body = resp.json()
        if isinstance(body, dict):
            code = str(body.get("code") or code)
            detail = body.get("detail") or body.get("title")
    except (json.JSONDecodeError, UnicodeDecodeError):
        detail = resp.text[:200] or None
    retry_after = parse_retry_after(resp.headers.get("retry-after"))
    cls = _BY_CODE.get(code)
    if cls is None:
        cls = (ServerError if resp.status_code >= 500 else RateLimited if resp.status_code == 429
               else NotFound if resp.status_code == 404 else Unauthorized if resp.status_code == 401 else ApiError)
    return cls(resp.status_code, code, detail, retry_after)


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, ApiError):
        return exc.retryable
    return isinstance(exc, httpx.TransportError)


class DeviceClient:
    """One device's view of the coordinator. Counts the bytes it moves, for reports."""

    def __init__(
        self,
        base_url: str,
        credential: str | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout_s: float = 60.0,
        max_attempts: int = 6,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        max_retry_after_s: float = 600.0,
        sleeper: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        """`verify` may be a TLS context built once and shared by many clients: building one loads the
        CA bundle (about 20 ms), which a simulation of a thousand devices would otherwise pay per device."""
        self.base_url = base_url.rstrip("/")
        self.credential = credential
        self.max_attempts = max_attempts
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.max_retry_after_s = max_retry_after_s
        self.sleeper = sleeper
        self.rng = rng or random.Random()
        self.bytes_sent = 0
        self.bytes_received = 0
        self._http = httpx.Client(base_url=self.base_url + API_PREFIX, transport=transport, timeout=timeout_s,
                                  headers={"User-Agent": USER_AGENT}, verify=verify)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> DeviceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing --------------------------------------------------------------------------
    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, ApiError) and exc.retry_after_s is not None:
            # Never earlier than the server asked, and never all at once: a coordinator that
            # recovers from an outage gives every device the same Retry-After, and a fleet that
            # obeys it to the second returns as one burst and takes it down again.
            wait = min(exc.retry_after_s, self.max_retry_after_s)
            return wait + self.rng.uniform(0.0, RETRY_AFTER_JITTER * max(wait, self.backoff_initial_s))
        # Exponential backoff with "equal jitter": uniform in [cap/2, cap], so devices
        # spread out but none comes back immediately.
        cap = min(self.backoff_max_s, self.backoff_initial_s * 2 ** (state.attempt_number - 1))
        return self.rng.uniform(0.5 * cap, cap)

    def _send(self, method: str, path: str, *, content: bytes | None = None, headers: Mapping[str, str] | None = None,
              ok: tuple[int, ...] = (200, 201)) -> httpx.Response:
        hdrs = dict(headers or {})
        if self.credential:
            hdrs["Authorization"] = f"Bearer {self.credential}"

        def attempt() -> httpx.Response:
            self.bytes_sent += len(content or b"")
            resp = self._http.request(method, path, content=content, headers=hdrs)
            self.bytes_received += len(resp.content)
            if resp.status_code not in ok:
                raise error_from_response(resp)
            return resp

        retrying = Retrying(stop=stop_after_attempt(self.max_attempts), wait=self._wait,
                            retry=retry_if_exception(_retryable), sleep=self.sleeper, reraise=True)
        try:
            return retrying(attempt)
        except httpx.TransportError as exc:
            raise NetworkError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc

    def _json(self, model: type[M], method: str, path: str, body: BaseModel | None = None) -> M:
        content = body.model_dump_json().encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if content is not None else None
        return model.model_validate_json(self._send(method, path, content=content, headers=headers).content)

    # --- the device API --------------------------------------------------------------------
    def enroll(self, token: str, label: str | None = None) -> EnrollResponse:
        """Exchange an enrollment token for a device credential (also set on this client)."""
        resp = self._json(EnrollResponse, "POST", "/enroll", EnrollRequest(token=token, label=label))
        self.credential = resp.credential
        return resp

    def check_in(self) -> CheckInResponse:
        return self._json(CheckInResponse, "POST", "/check-in")

    def _blob(self, path: str, etag: str | None) -> bytes | None:
        """Blob bytes, or None when the server says our copy (etag = its sha256) is current."""
        headers = {"If-None-Match": f'"{etag}"'} if etag else None
        resp = self._send("GET", path, headers=headers, ok=(200, 304))
        return None if resp.status_code == 304 else resp.content

    def model_weights(self, version: int, cached_sha256: str | None = None) -> bytes | None:
        return self._blob(f"/models/{version}/weights", cached_sha256)

    def class_centres(self, round_id: int, cached_sha256: str | None = None) -> bytes | None:
        return self._blob(f"/rounds/{round_id}/class-centres", cached_sha256)

    def class_embedding(self, round_id: int) -> np.ndarray | None:
        """This device's row of W held by the server, or None if it has none yet."""
        try:
            resp = self._send("GET", f"/rounds/{round_id}/class-embedding")
        except NotFound:
            return None
        arrays = tensors.decode(resp.content)
        if CLASS_EMBEDDING_TENSOR not in arrays:
            raise ApiError(resp.status_code, "bad_class_embedding", f"no {CLASS_EMBEDDING_TENSOR!r} tensor")
        return np.asarray(arrays[CLASS_EMBEDDING_TENSOR], dtype=np.float32)

    def submit(self, round_id: int, body: bytes, num_samples: int, base_version: int,
               metrics: Mapping[str, Any] | None = None) -> SubmitResponse:
        headers = {"Content-Type": "application/octet-stream", HEADER_NUM_SAMPLES: str(num_samples),
                   HEADER_BASE_VERSION: str(base_version)}
        if metrics:
            headers[HEADER_CLIENT_METRICS] = encode_metrics(metrics)
        resp = self._send("POST", f"/rounds/{round_id}/update", content=body, headers=headers)
        return SubmitResponse.model_validate_json(resp.content)


    def secagg_post(self, round_id: int, stage: str, message: BaseModel) -> SecAggAck:
        """A secure round's stage message (AdvertiseKeys, ShareKeys or UnmaskResponse); resending the same
        message is answered as the first was."""
        return self._json(SecAggAck, "POST", f"/rounds/{round_id}/secagg/{stage}", message)


def encode_metrics(metrics: Mapping[str, Any]) -> str:
    """Flat JSON of finite numbers and short strings, within the server's 4 KB; what does not fit is dropped."""
    clean: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, float) and not np.isfinite(value):
            continue
        if isinstance(value, bool | int | float):
            clean[key[:64]] = round(value, 6) if isinstance(value, float) else value
        elif isinstance(value, str):
            clean[key[:64]] = value[:200]
    text = json.dumps(clean, separators=(",", ":"))
    while len(text.encode()) > MAX_METRICS_BYTES and clean:
        clean.pop(next(reversed(clean)))
        text = json.dumps(clean, separators=(",", ":"))
    return text
