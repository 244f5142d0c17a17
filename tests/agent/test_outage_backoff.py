"""The agent through a coordinator outage: it waits as long as Retry-After
says (capped, with jitter so a fleet does not come back in one burst) and
then succeeds, instead of failing or hammering."""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from device_agent.client import RETRY_AFTER_JITTER, ApiError, DeviceClient, ServerError
from device_agent.runner import MAX_OUTAGE_BACKOFF_S, Agent

UNAVAILABLE = {"type": "https://fedface.dev/problems/dependency_unavailable", "title": "unavailable",
               "status": 503, "code": "dependency_unavailable", "dependency": "database"}
WAIT = {"status": "wait", "retry_after_s": 12.0}


@contextmanager
def flaky_server(outages: int, retry_after: str) -> Iterator[tuple[str, list[float]]]:
    """A real HTTP server that answers 503 + Retry-After `outages` times, then a check-in's 'wait'.
    Yields its URL and the arrival time of every request."""
    arrivals: list[float] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            arrivals.append(time.monotonic())
            down = len(arrivals) <= outages
            body = json.dumps(UNAVAILABLE if down else WAIT).encode()
            self.send_response(503 if down else 200)
            self.send_header("Content-Type", "application/problem+json" if down else "application/json")
            if down:
                self.send_header("Retry-After", retry_after)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", arrivals
    finally:
        server.shutdown()
        server.server_close()


def test_waits_out_a_503_with_retry_after_over_real_http() -> None:
    with flaky_server(outages=2, retry_after="1") as (url, arrivals), DeviceClient(url, "ffd_cred") as client:
        answer = client.check_in()
    assert answer.status == "wait" and answer.retry_after_s == 12.0
    assert len(arrivals) == 3
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    # Never before the server asked, and not much after (the jitter adds at most a quarter).
    assert all(1.0 <= g <= 1.0 + RETRY_AFTER_JITTER + 0.5 for g in gaps), gaps


def test_gives_up_after_its_attempts_with_a_retryable_error() -> None:
    sleeps: list[float] = []
    with flaky_server(outages=10, retry_after="1") as (url, arrivals), DeviceClient(
            url, "ffd_cred", max_attempts=3, sleeper=sleeps.append) as client, pytest.raises(ServerError) as err:
        client.check_in()
    assert len(arrivals) == 3 and len(sleeps) == 2
    assert err.value.retryable and err.value.code == "dependency_unavailable" and err.value.retry_after_s == 1.0


def _waits(retry_after: str, seed: int, **kw: Any) -> float:
    """The wait one device chooses after a 503 with this Retry-After."""
    sleeps: list[float] = []
    answers = [httpx.Response(503, json=UNAVAILABLE, headers={"Retry-After": retry_after}),
               httpx.Response(200, json=WAIT)]
    client = DeviceClient("http://coord", "ffd_cred", transport=httpx.MockTransport(lambda r: answers.pop(0)),
                          sleeper=sleeps.append, rng=random.Random(seed), **kw)
    client.check_in()
    assert len(sleeps) == 1
    return sleeps[0]


def test_a_fleet_told_the_same_retry_after_comes_back_spread_out() -> None:
    waits = [_waits("10", seed) for seed in range(50)]
    assert all(10.0 <= w <= 10.0 * (1 + RETRY_AFTER_JITTER) for w in waits)
    assert max(waits) - min(waits) > 1.0  # not one burst


def test_retry_after_is_capped() -> None:
    wait = _waits("86400", 0, max_retry_after_s=60.0)
    assert 60.0 <= wait <= 60.0 * (1 + RETRY_AFTER_JITTER)


class _Nothing:
    """What the agent's loop needs of its state and photos when it only computes a delay."""


def test_the_loop_backs_off_further_with_jitter_and_never_before_retry_after() -> None:
    client = DeviceClient("http://coord", rng=random.Random(1))
    agent = Agent(client, _Nothing(), _Nothing())  # type: ignore[arg-type]
    plain = ServerError(503, "dependency_unavailable")
    delays = [agent._outage_delay(n, plain) for n in range(1, 12)]
    assert delays[0] <= delays[3] <= delays[6]  # doubling...
    assert max(delays) <= MAX_OUTAGE_BACKOFF_S  # ...up to a bound
    assert len({round(d, 3) for d in delays[8:]}) > 1  # jittered even at the bound
    told = ServerError(503, "dependency_unavailable", retry_after_s=400.0)
    assert agent._outage_delay(1, told) >= 400.0
    assert agent._outage_delay(1, ApiError(503, "x", retry_after_s=1e6)) <= MAX_OUTAGE_BACKOFF_S
