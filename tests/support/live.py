"""The coordinator on a real loopback socket, in a thread of the test process; the free-port helper and
the poller every test waits with."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn

from coordinator.app import create_app
from coordinator.settings import Settings

# The benchmarks' port helper, re-exported: the tests and the benches pick ports one way.
from fedface_lab.bench_servers import free_port

__all__ = ["LiveServer", "free_port", "serving", "wait_until"]


def wait_until(predicate: object, timeout: float = 20.0, interval: float = 0.02, what: str = "condition") -> Any:
    """Poll a condition with a deadline and return its first truthy value; tests wait on state,
    never on a fixed delay. (`predicate` is typed loosely so that lambdas over attributes narrowed
    by the caller type-check.)"""
    assert callable(predicate)
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(interval)


class LiveServer:
    def __init__(self, settings: Settings, run_driver: bool = True) -> None:
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(settings, run_driver=run_driver)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_config=None, access_log=False,
                                lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self._server.serve())

    def start(self) -> None:
        self._thread.start()
        wait_until(lambda: self._server.started, timeout=30, what="uvicorn start")
        with httpx.Client(base_url=self.url) as c:
            wait_until(lambda: c.get("/readyz").status_code == 200, timeout=30, what="/readyz")

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)


@contextmanager
def serving(settings: Settings, run_driver: bool = True) -> Iterator[httpx.Client]:
    """A live coordinator for the block, and an HTTP client on it; stopped on exit."""
    srv = LiveServer(settings, run_driver=run_driver)
    srv.start()
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as api:
            yield api
    finally:
        srv.stop()
