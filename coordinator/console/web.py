"""Rendering for the console: Jinja2 templates, the security headers every console response carries,
and the route class that turns a refused action into a page showing the API's own problem."""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.exceptions import HTTPException as StarletteHTTPException

from coordinator.console.auth import CONSOLE, ConsoleSession, LoginRequired, current_session
from coordinator.deps import get_ctx
from coordinator.errors import FedFaceError

TEMPLATES = Path(__file__).parent / "templates"
DASH = "\u2013"  # what a table shows for a value not recorded
# No inline script or style anywhere: charts are SVG with presentation attributes, behaviour is console.js.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")
# A round's states as the admin API names them (RoundOut.state); the first two are a running round.
ROUND_STATES = ("collecting", "aggregating", "committed", "failed", "cancelled")
ACTIVE_STATES = ROUND_STATES[:2]
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def _ago(value: datetime | None) -> str:
    if value is None:
        return "never"
    s = (datetime.now(UTC) - value).total_seconds()
    return "in the future" if s < -1 else f"{duration(max(s, 0))} ago"


def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return DASH
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"
    return f"{int(seconds // 86400)} d {int(seconds % 86400 // 3600)} h"


def _when(value: datetime | None) -> str:
    return DASH if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _size(n: float | None) -> str:
    if n is None:
        return DASH
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return DASH
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}g}" if math.isfinite(value) else str(value)


env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined,
                  trim_blocks=True, lstrip_blocks=True)
env.filters.update(ago=_ago, when=_when, size=_size, num=_num, duration=duration)


def validation_summary(errors: Sequence[Mapping[str, Any]]) -> str:
    """Where and why, for each of the first few errors; never the input (it may be large)."""
    lines = [f"{'.'.join(str(p) for p in e.get('loc', ())) or 'request'}: {str(e.get('msg', ''))[:200]}"
             for e in errors[:5]]
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(lines) + more


def harden(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def render(request: Request, template: str, session: ConsoleSession | None, status: int = 200,
           **context: Any) -> HTMLResponse:
    html = env.get_template(template).render(
        csrf=session.csrf if session else None, signed_in=session is not None, path=request.url.path,
        section=section_of(request.url.path), status=status, **context)
    return HTMLResponse(html, status_code=status)


def section_of(path: str) -> str:
    parts = path.removeprefix(CONSOLE).strip("/").split("/")
    return parts[0] if parts and parts[0] not in ("", "fragments") else "overview"


def see_other(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303)


def login_redirect(next_path: str) -> RedirectResponse:
    from urllib.parse import urlencode

    query = urlencode({"next": next_path}) if next_path and next_path != CONSOLE else ""
    return see_other(f"{CONSOLE}/login" + (f"?{query}" if query else ""))


async def problem_page(request: Request, status: int, code: str, title: str, detail: str | None) -> Response:
    """A refused request, as the admin API would have named it (status, code, title, detail)."""
    if request.url.path.startswith(f"{CONSOLE}/fragments/"):
        return render(request, "fragment_error.html", None, status=status, code=code, title=title, detail=detail)
    session = await current_session(request, get_ctx(request))
    back = f"{CONSOLE}/{section_of(request.url.path)}".replace("/overview", "")
    return render(request, "error.html", session, status=status, code=code, title=title, detail=detail, back=back)


class ConsoleRoute(APIRoute):
    """Every console response carries the security headers; errors become pages, never JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                response = await handler(request)
            except LoginRequired as exc:
                response = login_redirect(exc.next_path)
            except FedFaceError as exc:
                response = await problem_page(request, exc.status, exc.code, exc.title, exc.detail)
                if exc.status == 401:
                    response.headers["WWW-Authenticate"] = 'Cookie realm="console"'
            except StarletteHTTPException as exc:  # a malformed multipart body, say
                response = await problem_page(request, exc.status_code, f"http_{exc.status_code}", "Bad request",
                                              str(exc.detail))
            except RequestValidationError as exc:
                response = await problem_page(request, 422, "validation_error", "Request validation failed",
                                              validation_summary(exc.errors()))
            return harden(response)

        return guarded
