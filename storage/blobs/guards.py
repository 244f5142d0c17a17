"""Per-key mutual exclusion between committing bytes that are already stored
and the collector's age-checked removal of the same key.

S3 has no delete conditional on age: between the collector's read of an
object's age and its DELETE, an upload could make the object young again (the
same bytes sent anew) and lose it. Both hold the key's guard for those steps.
The local store needs none: an flock does the same there (local.py)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from storage.redis_state import CoordinationState

log = structlog.get_logger("storage.blob_guard")


class KeyGuard(ABC):
    # A committer waits this long for a key; a collector never waits (a key being committed is young).
    wait_s = 65.0

    @abstractmethod
    async def _try_acquire(self, key: str, token: str) -> bool: ...

    @abstractmethod
    async def _release(self, key: str, token: str) -> None: ...

    @asynccontextmanager
    async def hold(self, key: str, wait: bool) -> AsyncIterator[bool]:
        """Yields whether the key is held. A collector removes only while holding it; a committer that
        cannot get it (the guard unreachable) goes ahead, since a collector cannot get it either."""
        token = uuid.uuid4().hex
        deadline = time.monotonic() + self.wait_s
        held = await self._attempt(key, token)
        while not held and wait and time.monotonic() < deadline:
            await asyncio.sleep(0.005)  # a collector holds a key for one HEAD and one DELETE
            held = await self._attempt(key, token)
        try:
            yield held
        finally:
            if held:
                await self._release(key, token)

    async def _attempt(self, key: str, token: str) -> bool:
        try:
            return await self._try_acquire(key, token)
        except Exception as exc:
            log.warning("blob_guard_unavailable", error=str(exc))
            return False


class ProcessKeyGuard(KeyGuard):
    """Within one process: enough for a store that one process alone writes and collects."""

    def __init__(self) -> None:
        # A thread lock, not an asyncio one: the store may be used from more than one event loop.
        self._lock, self._held = threading.Lock(), set[str]()

    async def _try_acquire(self, key: str, token: str) -> bool:
        with self._lock:
            if key in self._held:
                return False
            self._held.add(key)
            return True

    async def _release(self, key: str, token: str) -> None:
        with self._lock:
            self._held.discard(key)


class LeaseKeyGuard(KeyGuard):
    """Across every replica: a Redis lease per key, expiring should its holder die."""

    def __init__(self, state: CoordinationState, ttl_s: float = 60.0) -> None:
        self.state, self.ttl_s = state, ttl_s

    async def _try_acquire(self, key: str, token: str) -> bool:
        return await self.state.acquire_or_renew_lease(f"blob-key:{key}", token, self.ttl_s)

    async def _release(self, key: str, token: str) -> None:
        try:
            await self.state.release_lease(f"blob-key:{key}", token)
        except Exception as exc:  # it expires by itself
            log.warning("blob_guard_release_failed", error=str(exc))
