"""Console sign-in: the admin token once, then a signed, expiring session cookie.

The cookie holds a random session id and a tag of the admin token's hash, signed with the console
secret (itsdangerous). It is HttpOnly and SameSite=Strict, and Secure over TLS. Replacing the
admin token ends every session (the tag no longer matches); signing out ends one, recorded in Redis
until it would have expired. State-changing forms carry a CSRF token derived from the session id,
so a page of another site can neither read nor forge it."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from coordinator.context import AppContext
from coordinator.deps import Ctx, get_ctx
from coordinator.errors import Forbidden, Unauthorized
from coordinator.security import DEVICE_CREDENTIAL_PREFIX, hash_secret
from coordinator.settings import Settings

SESSION_COOKIE = "fedface_console"
LOGIN_COOKIE = "fedface_console_login"
LOGIN_NONCE_S = 3600
CONSOLE = "/console"


class LoginRequired(Exception):
    """A page asked for without a valid session: answered with a redirect to the sign-in page."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


@dataclass(frozen=True)
class ConsoleSession:
    session_id: str
    csrf: str
    issued_at: float


def console_secret(settings: Settings) -> bytes:
    """The configured secret, else one generated (0600) into data_dir, as the admin token is."""
    if settings.console_secret is not None:
        return settings.console_secret.get_secret_value().encode()
    path: Path = settings.data_dir / "console-secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(48) + "\n")
    return path.read_text().strip().encode()


def _secret(request: Request) -> bytes:
    # Read once per process: a file read per request buys nothing, the secret does not change.
    cached: bytes | None = getattr(request.app.state, "console_secret", None)
    if cached is None:
        cached = console_secret(get_ctx(request).settings)
        request.app.state.console_secret = cached
    return cached


def _mac(key: bytes, purpose: str, value: str) -> str:
    return hmac.new(key, f"{purpose}|{value}".encode(), hashlib.sha256).hexdigest()


def _serializer(request: Request, salt: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(_secret(request), salt=salt)


def _admin_tag(request: Request, ctx: AppContext) -> str:
    return _mac(_secret(request), "admin", ctx.admin_token_hash)[:32]


def _secure(request: Request, ctx: AppContext) -> bool:
    configured = ctx.settings.console_secure_cookie
    return configured if configured is not None else request.url.scheme == "https"


def refuse_device_credential(request: Request) -> None:
    """A device's credential never opens the console, whatever cookie comes with it."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip().startswith(DEVICE_CREDENTIAL_PREFIX):
        raise Forbidden("a device credential cannot open the console")


async def current_session(request: Request, ctx: AppContext) -> ConsoleSession | None:
    raw = request.cookies.get(SESSION_COOKIE)
    if not raw or len(raw) > 512:
        return None
    try:
        payload, issued = _serializer(request, "session").loads(
            raw, max_age=int(ctx.settings.console_session_s), return_timestamp=True)
    except BadSignature:  # also SignatureExpired
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get("sid"), str):
        return None
    if not hmac.compare_digest(str(payload.get("adm", "")), _admin_tag(request, ctx)):
        return None
    sid = payload["sid"]
    if await ctx.state.console_session_ended(sid):
        return None
    return ConsoleSession(sid, _mac(_secret(request), "csrf", sid), issued.timestamp())


async def page_session(request: Request, ctx: Ctx) -> ConsoleSession:
    refuse_device_credential(request)
    session = await current_session(request, ctx)
    if session is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequired(target if request.method == "GET" else CONSOLE)
    return session


async def fragment_session(request: Request, ctx: Ctx) -> ConsoleSession:
    refuse_device_credential(request)
    session = await current_session(request, ctx)
    if session is None:
        raise Unauthorized("sign in to the console again")
    return session


PageSession = Annotated[ConsoleSession, Depends(page_session)]
FragmentSession = Annotated[ConsoleSession, Depends(fragment_session)]


def check_same_origin(request: Request) -> None:
    """Browsers send Origin with every POST; one naming another site is refused outright."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return
    expected = f"{request.url.scheme}://{request.url.netloc}"
    if origin != expected:
        raise Forbidden("a form from another origin cannot act on the console")


def check_csrf(session: ConsoleSession, form: Any) -> None:
    sent = form.get("csrf") if form is not None else None
    if not isinstance(sent, str) or not hmac.compare_digest(sent, session.csrf):
        raise Forbidden("the form's CSRF token is missing or wrong: reload the page and send it again")


def admin_token_matches(ctx: AppContext, token: str) -> bool:
    if not token or token.startswith(DEVICE_CREDENTIAL_PREFIX) or len(token) > 512:
        return False
    return hmac.compare_digest(hash_secret(token), ctx.admin_token_hash)


def start_session(request: Request, ctx: AppContext, response: Response) -> None:
    payload = {"sid": secrets.token_urlsafe(24), "adm": _admin_tag(request, ctx)}
    value = _serializer(request, "session").dumps(payload)
    response.set_cookie(SESSION_COOKIE, str(value), max_age=int(ctx.settings.console_session_s), path=CONSOLE,
                        httponly=True, samesite="strict", secure=_secure(request, ctx))
    response.delete_cookie(LOGIN_COOKIE, path=CONSOLE)


async def end_session(request: Request, ctx: AppContext, session: ConsoleSession, response: Response) -> None:
    left = session.issued_at + ctx.settings.console_session_s - time.time()
    if left > 0:
        await ctx.state.end_console_session(session.session_id, left)
    response.delete_cookie(SESSION_COOKIE, path=CONSOLE, httponly=True, samesite="strict",
                           secure=_secure(request, ctx))


@dataclass(frozen=True)
class LoginForm:
    """The sign-in form's CSRF token, bound to a short-lived cookie set with the form."""

    cookie: str
    csrf: str

    def set_cookie(self, request: Request, ctx: AppContext, response: Response) -> None:
        response.set_cookie(LOGIN_COOKIE, self.cookie, max_age=LOGIN_NONCE_S, path=CONSOLE, httponly=True,
                            samesite="strict", secure=_secure(request, ctx))


def new_login_form(request: Request) -> LoginForm:
    nonce = secrets.token_urlsafe(24)
    return LoginForm(str(_serializer(request, "login").dumps(nonce)), _mac(_secret(request), "login", nonce))


def check_login_csrf(request: Request, form: Any) -> None:
    raw = request.cookies.get(LOGIN_COOKIE, "")
    try:
        nonce = _serializer(request, "login").loads(raw, max_age=LOGIN_NONCE_S) if 0 < len(raw) <= 512 else None
    except BadSignature:
        nonce = None
    sent = form.get("csrf")
    if not isinstance(nonce, str) or not isinstance(sent, str) or not hmac.compare_digest(
            sent, _mac(_secret(request), "login", nonce)):
        raise Forbidden("the sign-in form expired or came from elsewhere: reload it and sign in again")
