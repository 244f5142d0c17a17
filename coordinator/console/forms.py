"""Console forms: bounded reading, the CSRF check, and the admin API's own schemas for validation."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import Depends, Request
from pydantic import ValidationError
from starlette.datastructures import FormData

from coordinator.console.auth import PageSession, check_csrf, check_same_origin
from coordinator.deps import get_ctx
from coordinator.errors import InvalidConfig, InvalidHeader, PayloadTooLarge
from coordinator.schemas import RoundConfig, TokenRequest

# Every console form but the model upload is a few fields; none needs more.
FORM_LIMIT = 64 * 1024
# The upload's other fields (CSRF token, note, flags) beside the file itself.
UPLOAD_OVERHEAD = 64 * 1024
ACTOR = "admin:console"


async def read_form(request: Request, limit: int) -> FormData:
    declared = request.headers.get("content-length")
    if declared is None or not declared.isdigit():
        raise InvalidHeader("a console form is sent with a Content-Length")
    if int(declared) > limit:
        raise PayloadTooLarge(f"form of {declared} bytes exceeds the limit of {limit}", limit=limit)
    return await request.form(max_files=1, max_fields=64, max_part_size=FORM_LIMIT)


async def csrf_form(request: Request, session: PageSession) -> FormData:
    """The posted form, once its origin and CSRF token check out; nothing runs before that."""
    check_same_origin(request)
    form = await read_form(request, FORM_LIMIT)
    check_csrf(session, form)
    return form


async def upload_form(request: Request, session: PageSession) -> FormData:
    check_same_origin(request)
    form = await read_form(request, get_ctx(request).settings.max_model_bytes + UPLOAD_OVERHEAD)
    check_csrf(session, form)
    return form


CsrfForm = Annotated[FormData, Depends(csrf_form)]
UploadForm = Annotated[FormData, Depends(upload_form)]


def text(form: FormData, name: str) -> str | None:
    value = form.get(name)
    return value.strip() if isinstance(value, str) and value.strip() else None


def errors_of(exc: ValidationError) -> list[str]:
    return [f"{'.'.join(str(p) for p in e['loc']) or 'form'}: {e['msg']}" for e in exc.errors()[:20]]


def round_config(form: FormData) -> tuple[RoundConfig | None, dict[str, Any], list[str]]:
    """The form as the API's RoundConfig, validated by it; and the values to show again with any errors."""
    values: dict[str, Any] = {k: text(form, k) for k in RoundConfig.model_fields}
    data: dict[str, Any] = {k: v for k, v in values.items() if v is not None and k != "params"}
    errors: list[str] = []
    if values.get("params"):
        try:
            data["params"] = json.loads(values["params"])
        except json.JSONDecodeError as exc:
            errors.append(f"params: not JSON ({exc.msg} at character {exc.pos})")
    try:
        config = RoundConfig.model_validate(data) if not errors else None
    except ValidationError as exc:
        return None, values, errors_of(exc)
    return config, values, errors


def default_round_values() -> dict[str, Any]:
    """RoundConfig's defaults as the start form shows them."""
    defaults = RoundConfig().model_dump(mode="json")
    return {k: (json.dumps(v) if k == "params" else v) for k, v in defaults.items()}


def note(form: FormData) -> str | None:
    """A free-text note, held to the bounds the API sets for notes (TokenRequest.note)."""
    try:
        return TokenRequest.model_validate({"note": text(form, "note")}).note
    except ValidationError as exc:
        raise InvalidConfig("; ".join(errors_of(exc))) from None
