"""Problem documents for what the framework refuses before a route runs:
request validation errors and HTTP-level errors (unknown path, wrong method).

Both stay small whatever was sent. Pydantic's errors carry the offending input
and a body can produce one error per key, so listing them all would answer a
large body with a larger one: only where and why are listed, each clipped, and
only the first few."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

MAX_LISTED_ERRORS = 20
MAX_MSG_CHARS = 200
MAX_LOC_PART_CHARS = 64
MAX_DETAIL_CHARS = 1000


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def clipped_detail(detail: str | None) -> str | None:
    """A typed error's detail, bounded: some quote what they refused (a config's validation errors)."""
    return None if detail is None else _clip(detail, MAX_DETAIL_CHARS)


def listed_errors(errors: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The first errors' locations and messages, clipped; never their input values."""
    listed = []
    for error in errors[:MAX_LISTED_ERRORS]:
        loc = [part if isinstance(part, int) else _clip(str(part), MAX_LOC_PART_CHARS) for part in error.get("loc", ())]
        listed.append({"loc": loc, "msg": _clip(str(error.get("msg", "")), MAX_MSG_CHARS)})
    return listed


def summary(listed: Sequence[Mapping[str, Any]], total: int) -> str | None:
    """One line naming the first failing field, for clients that show only `detail`."""
    if not listed:
        return None
    first = listed[0]
    where = ".".join(str(part) for part in first["loc"]) or "request"
    more = f" (and {total - 1} more)" if total > 1 else ""
    return f"{where}: {first['msg']}{more}"


# Stable codes for the statuses the framework itself answers with.
_HTTP_CODES = {
    400: "malformed_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def http_problem(status: int, detail: Any) -> tuple[str, str, str | None]:
    """(code, title, detail) for an HTTP error the framework raised."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "HTTP error"
    text = None if detail is None or str(detail) == title else _clip(str(detail), MAX_MSG_CHARS)
    return _HTTP_CODES.get(status, f"http_{status}"), title, text
