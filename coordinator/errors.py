"""Typed errors, each with an HTTP status and a stable code, rendered as RFC
9457 problem documents. Services raise these; routes never build responses
for failures themselves."""

from __future__ import annotations

import math
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from coordinator.metrics import ERRORS
from coordinator.validation_problems import clipped_detail, http_problem, listed_errors, summary

log = structlog.get_logger("coordinator.errors")


class FedFaceError(Exception):
    status = 400
    code = "bad_request"
    title = "Bad request"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail
        self.extra = extra


class Unauthorized(FedFaceError):
    status, code, title = 401, "unauthorized", "Missing or invalid credentials"


class CredentialRevoked(FedFaceError):
    status, code, title = 403, "credential_revoked", "This credential has been revoked"


class Forbidden(FedFaceError):
    status, code, title = 403, "forbidden", "Not allowed for this credential"


class NotSelected(FedFaceError):
    status, code, title = 403, "not_selected", "This device is not part of that round"


class InvalidEnrollmentToken(FedFaceError):
    status, code, title = 401, "invalid_enrollment_token", "Enrollment token is invalid, expired or used up"


class NotFound(FedFaceError):
    status, code, title = 404, "not_found", "Not found"


class RoundNotFound(NotFound):
    code, title = "round_not_found", "No such round"


class ModelNotFound(NotFound):
    code, title = "model_not_found", "No such model version"


class DeviceNotFound(NotFound):
    code, title = "device_not_found", "No such device"


class TokenNotFound(NotFound):
    code, title = "token_not_found", "No such enrollment token"


class Conflict(FedFaceError):
    status, code, title = 409, "conflict", "Conflict"


class RoundClosed(Conflict):
    code, title = "round_closed", "The round is not accepting submissions"


class StaleBaseVersion(Conflict):
    code, title = "stale_base_version", "The update was trained from another model version"


class DuplicateSubmission(Conflict):
    code, title = "duplicate_submission", "A different update was already accepted for this round"


class RoundActive(Conflict):
    code, title = "round_active", "Another round is still running"


class InvalidRoundState(Conflict):
    code, title = "invalid_round_state", "The round cannot make that transition"


class NoServedModel(Conflict):
    code, title = "no_served_model", "No model version is served yet"


class PayloadTooLarge(FedFaceError):
    status, code, title = 413, "payload_too_large", "The body exceeds the configured limit"


class InvalidTensors(FedFaceError):
    status, code, title = 422, "invalid_tensors", "The body is not a valid safetensors file"


class TensorSpecMismatch(FedFaceError):
    status, code, title = 422, "tensor_spec_mismatch", "Tensor names, shapes or dtypes differ from the manifest"


class NonFiniteValues(FedFaceError):
    status, code, title = 422, "non_finite_values", "The update contains NaN or Inf"


class InvalidQuantization(FedFaceError):
    status, code, title = 422, "invalid_quantization", "An int8 update's scale or values are out of range"


class DegenerateClassEmbedding(FedFaceError):
    status, code, title = 422, "degenerate_class_embedding", "The class embedding is zero or too short to normalise"


class InvalidJson(FedFaceError):
    status, code, title = 400, "invalid_json", "The body is not valid JSON"


class InvalidHeader(FedFaceError):
    status, code, title = 400, "invalid_header", "A header's value is malformed"


class InvalidNumSamples(FedFaceError):
    status, code, title = 422, "invalid_num_samples", "The sample count is missing, negative or absurd"


class InvalidMetadata(FedFaceError):
    status, code, title = 422, "invalid_metadata", "Submission metadata is malformed"


class InvalidConfig(FedFaceError):
    status, code, title = 422, "invalid_config", "The configuration is invalid"


class RateLimited(FedFaceError):
    status, code, title = 429, "rate_limited", "Too many requests"


class DependencyUnavailable(FedFaceError):
    """The database, Redis or the blob store cannot serve now; `dependency` says which."""

    status, code, title = 503, "dependency_unavailable", "A service the coordinator depends on is unavailable"


def problem(status: int, code: str, title: str, detail: str | None, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"type": f"https://fedface.dev/problems/{code}", "title": title, "status": status,
                            "code": code, "detail": detail}
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(FedFaceError)
    async def _fedface_error(request: Request, exc: FedFaceError) -> JSONResponse:
        ERRORS.labels(code=exc.code).inc()
        log.warning("request_refused", code=exc.code, status=exc.status, path=request.url.path, detail=exc.detail)
        headers = {}
        if "retry_after_s" in exc.extra:
            headers["Retry-After"] = str(max(1, math.ceil(float(exc.extra["retry_after_s"]))))
        resp = problem(exc.status, exc.code, exc.title, clipped_detail(exc.detail), **exc.extra)
        resp.headers.update(headers)
        if exc.status == 401:
            resp.headers["WWW-Authenticate"] = "Bearer"
        return resp

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        ERRORS.labels(code="validation_error").inc()
        all_errors = exc.errors()
        errors = listed_errors(all_errors)
        log.warning("request_refused", code="validation_error", status=422, path=request.url.path)
        return problem(422, "validation_error", "Request validation failed", summary(errors, len(all_errors)),
                       errors=errors, error_count=len(all_errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code, title, detail = http_problem(exc.status_code, exc.detail)
        ERRORS.labels(code=code).inc()
        resp = problem(exc.status_code, code, title, detail)
        resp.headers.update(exc.headers or {})
        return resp


class UploadTimeout(FedFaceError):
    status, code, title = 408, "upload_timeout", "The upload took longer than the coordinator allows"


class InvalidCursor(FedFaceError):
    status, code, title = 400, "invalid_cursor", "The page cursor is malformed"


class PrivacyBudgetExhausted(Conflict):
    code, title = "privacy_budget_exhausted", "Another DP round would exceed the privacy budget"


class VersionPruned(FedFaceError):
    status, code, title = 410, "version_pruned", "Retention released this model version's weights"
