"""Signing in with the admin token, and out."""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import APIRouter, Request, Response

from coordinator.console import auth
from coordinator.console.auth import CONSOLE, PageSession
from coordinator.console.forms import FORM_LIMIT, CsrfForm, read_form, text
from coordinator.console.web import ConsoleRoute, render, see_other
from coordinator.deps import Ctx
from coordinator.errors import RateLimited

router = APIRouter(prefix=CONSOLE, route_class=ConsoleRoute)
# Per client address and minute: enough for a person mistyping, far too few to guess a 256-bit token
# (the limit only keeps the log and the CPU quiet).
LOGIN_ATTEMPTS_PER_MIN = 10


def _safe_next(value: str | None) -> str:
    """Only a console path of this site: never another host, scheme or a protocol-relative URL."""
    if not value:
        return CONSOLE
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not value.startswith(CONSOLE) or value.startswith("//") or "\\" in value:
        return CONSOLE
    return value


def _login_page(request: Request, ctx: Ctx, target: str, error: str | None, status: int = 200) -> Response:
    form = auth.new_login_form(request)
    response = render(request, "login.html", None, status=status, next=target, error=error, login_csrf=form.csrf)
    form.set_cookie(request, ctx, response)
    return response


@router.get("/login")
async def login_page(request: Request, ctx: Ctx, next: str | None = None) -> Response:
    auth.refuse_device_credential(request)
    if await auth.current_session(request, ctx) is not None:
        return see_other(_safe_next(next))
    return _login_page(request, ctx, _safe_next(next), None)


@router.post("/login")
async def login(request: Request, ctx: Ctx) -> Response:
    auth.refuse_device_credential(request)
    auth.check_same_origin(request)
    client = request.client.host if request.client else "unknown"
    if await ctx.state.hit_rate_limit("console-login", client, LOGIN_ATTEMPTS_PER_MIN):
        raise RateLimited("too many sign-in attempts from this address; wait a minute", retry_after_s=60)
    form = await read_form(request, FORM_LIMIT)
    auth.check_login_csrf(request, form)
    target = _safe_next(text(form, "next"))
    if not auth.admin_token_matches(ctx, text(form, "token") or ""):
        return _login_page(request, ctx, target, "That is not the admin token.", status=401)
    response = see_other(target)
    auth.start_session(request, ctx, response)
    return response


@router.post("/logout")
async def logout(request: Request, ctx: Ctx, session: PageSession, form: CsrfForm) -> Response:
    response = see_other(f"{CONSOLE}/login")
    await auth.end_session(request, ctx, session, response)
    return response
