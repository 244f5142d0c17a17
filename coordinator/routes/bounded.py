"""The route class of the API routers: a JSON body is bounded and parsed before FastAPI reads it.

FastAPI reads a body route's whole body into memory, and turns a body it cannot
parse for any reason but a syntax error (nested past the interpreter's
recursion limit, bytes that are not UTF-8) into a bare 400 that is not a
problem document. Here a body over `max_json_body_bytes` is refused with 413,
by its Content-Length before a byte is read or while it streams in, and any
body that does not parse answers `invalid_json`. Routes that stream their own
body (uploads) have no body field and pass through untouched: they bound it
themselves against their own limits."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from json import JSONDecodeError
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.types import Message

from coordinator.deps import get_ctx
from coordinator.errors import InvalidJson, PayloadTooLarge
from coordinator.services.headers import declared_length


class BoundedJsonRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def bounded(request: Request) -> Response:
            limit = get_ctx(request).settings.max_json_body_bytes
            return await handler(await _read_bounded(request, limit))

        return bounded


def _is_json(content_type: str | None) -> bool:
    """The media types FastAPI parses as JSON; other bodies reach validation as bytes and fail there."""
    if content_type is None:
        return False
    media_type = content_type.partition(";")[0].strip().lower()
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


async def _read_bounded(request: Request, limit: int) -> Request:
    """The request again, with its body read (at most `limit` bytes) and, if JSON, parsed and cached."""
    declared_length(request.headers.get("content-length"), limit, "JSON body")
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise PayloadTooLarge(f"JSON body exceeds the limit of {limit} bytes", limit=limit)
        chunks.append(chunk)
    body = b"".join(chunks)
    replayed = Request(request.scope, _replay(body, request))
    if body and _is_json(request.headers.get("content-type")):
        try:
            await replayed.json()  # cached on the request: FastAPI reuses it instead of parsing again
        except JSONDecodeError as exc:
            raise InvalidJson(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
        except UnicodeDecodeError:
            raise InvalidJson("the body is not UTF-8 text") from None
        except RecursionError:
            raise InvalidJson("the body is nested too deeply") from None
        except ValueError:  # e.g. an integer literal past Python's digit limit
            raise InvalidJson("the body holds a value that cannot be decoded") from None
    return replayed


def _replay(body: bytes, request: Request) -> Callable[[], Coroutine[Any, Any, Message]]:
    """A receive channel that hands out the body once, then waits on the client (for a disconnect)."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await request.receive()

    return receive
