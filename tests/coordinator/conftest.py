"""Fixtures shared by the coordinator tests."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.live import LiveServer


@pytest.fixture
def api(server: LiveServer) -> Iterator[httpx.Client]:
    """A client of the live coordinator (real HTTP on loopback)."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client
