"""What fault-injection tests share: a log of every answer the clients saw
(so a test can say no client ever got a 500), the check of a 503 problem
document, and running device calls side by side."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx

T = TypeVar("T")
R = TypeVar("R")

# Round parameters under which the new model is exactly the sample-weighted mean of the accepted
# updates (no norm clipping, no sample cap), so that a test can tell each update was counted once.
EXACT_MEAN = {"robust": {"norm_bound": "off", "sample_cap": "off"}}

# What a 503 body must not show a device: driver names, exception classes, addresses.
LEAKS = ("Traceback", "Error(", "asyncpg", "sqlalchemy", "redis.", "psycopg", "127.0.0.1", "Errno", "/tmp/")


class AnswerLog:
    """Every response any client of a test received, by method, path and status."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()

    def record(self, response: httpx.Response) -> None:
        with self._lock:
            self.seen.append((response.request.method, response.request.url.path, response.status_code))

    def client(self, base_url: str, timeout: float = 30) -> httpx.Client:
        return httpx.Client(base_url=base_url, timeout=timeout, event_hooks={"response": [self.record]})

    def transport(self) -> httpx.BaseTransport:
        """For clients built elsewhere (the device agent's): records what passes through."""
        return _RecordingTransport(self)

    def server_errors(self) -> list[tuple[str, str, int]]:
        """Answers that say the server failed rather than that a dependency is unavailable."""
        with self._lock:
            return [s for s in self.seen if s[2] >= 500 and s[2] != 503]

    def count(self, status: int) -> int:
        with self._lock:
            return sum(1 for s in self.seen if s[2] == status)


class _RecordingTransport(httpx.HTTPTransport):
    def __init__(self, log: AnswerLog) -> None:
        super().__init__()
        self._log = log

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        response.request = request
        self._log.record(response)
        return response


def assert_unavailable(resp: httpx.Response, dependency: str) -> dict[str, Any]:
    """A 503 problem document naming `dependency`, with a Retry-After and nothing internal in it."""
    assert resp.status_code == 503, f"{resp.request.method} {resp.request.url.path}: {resp.status_code} {resp.text}"
    assert resp.headers["content-type"].startswith("application/problem+json"), resp.headers["content-type"]
    retry_after = resp.headers.get("retry-after")
    assert retry_after is not None and retry_after.isdigit() and int(retry_after) >= 1, retry_after
    body = resp.json()
    assert body["code"] == "dependency_unavailable" and body["status"] == 503, body
    assert body["dependency"] == dependency, body
    leaked = [word for word in LEAKS if word in resp.text]
    assert not leaked, f"the problem document shows internals {leaked}: {resp.text}"
    return dict(body)


def concurrently(fn: Callable[[T], R], items: Iterable[T], workers: int = 8) -> list[R]:
    """fn over items from several threads at once: several pooled connections get used, as under load."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))
