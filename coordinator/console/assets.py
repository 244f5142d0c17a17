"""The console's stylesheet and script, served by the coordinator itself (the CSP allows no other origin)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request, Response

from coordinator.console.auth import CONSOLE, refuse_device_credential
from coordinator.console.web import ConsoleRoute
from coordinator.errors import NotFound

router = APIRouter(prefix=CONSOLE, route_class=ConsoleRoute)
STATIC = Path(__file__).parent / "static"
TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml"}
# Read once: a handful of small files that change only with a release.
_FILES = {p.name: (p.read_bytes(), TYPES[p.suffix]) for p in STATIC.iterdir() if p.suffix in TYPES}


@router.get("/static/{name}")
async def asset(name: str, request: Request) -> Response:
    refuse_device_credential(request)
    # Only the names listed at start-up, so no path can reach outside the folder.
    found = _FILES.get(name)
    if found is None:
        raise NotFound(f"no console asset {name!r}")
    body, media_type = found
    return Response(body, media_type=media_type, headers={"Cache-Control": "private, max-age=300"})
