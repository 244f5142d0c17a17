"""The error responses the API routers declare in OpenAPI: RFC 9457 problem documents
(`application/problem+json`, the `Problem` schema), one set per group of routes."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic.json_schema import models_json_schema

from fedface_common.wire import Problem

_REF_TEMPLATE = "#/components/schemas/{model}"

_DESCRIPTIONS = {
    400: "Malformed request: a body that is not JSON (`invalid_json`) or a malformed header (`invalid_header`)",
    401: "Missing or invalid credentials",
    403: "Not allowed for this credential (revoked, not selected, not in the device's task)",
    404: "No such resource",
    408: "The upload did not finish within the coordinator's max_upload_s (`upload_timeout`)",
    409: "Conflicts with the current state (round closed or active, stale base version, duplicate submission)",
    413: "The body exceeds its configured limit",
    422: "The request or its body is invalid (`validation_error` lists where and why)",
    429: "Too many requests; see Retry-After",
    503: "A backing service (database, Redis, blob store) is unavailable",
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {
        status: {
            "description": _DESCRIPTIONS[status],
            "content": {"application/problem+json": {"schema": {"$ref": _REF_TEMPLATE.format(model="Problem")}}},
        }
        for status in statuses
    }


DEVICE_ERRORS = problem_responses(400, 401, 403, 404, 409, 413, 422, 429, 503)
ADMIN_ERRORS = problem_responses(400, 401, 404, 409, 413, 422, 503)


def install_problem_schema(app: FastAPI) -> None:
    """Add the schemas the responses above refer to: FastAPI collects only models that routes return."""
    _, top = models_json_schema([(Problem, "serialization")], ref_template=_REF_TEMPLATE)
    schemas = top["$defs"]
    default = app.openapi

    def openapi() -> dict[str, Any]:
        document = default()
        document.setdefault("components", {}).setdefault("schemas", {}).update(schemas)
        return document

    app.openapi = openapi  # type: ignore[method-assign]
