"""A pass run every interval in this process, for as long as the process serves.

A pass that raises is logged and the next one runs: the work it does (folding partial sums, collecting
blobs) is safe to redo, and an outage of Redis, Postgres or the blob store must not end the loop."""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod

import structlog


class PeriodicTask(ABC):
    # The structlog event logged when a pass fails.
    failure_event: str = "periodic_task_failed"

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    @property
    @abstractmethod
    def interval_s(self) -> float: ...

    @abstractmethod
    async def run_pass(self) -> object:
        """One pass of the work."""

    # Whether the first pass runs at start (True) or after one interval.
    run_at_start: bool = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _loop(self) -> None:
        log = structlog.get_logger(type(self).__module__)
        if not self.run_at_start:
            await asyncio.sleep(self.interval_s)
        while True:
            try:
                await self.run_pass()
            except Exception:
                log.exception(self.failure_event)
            await asyncio.sleep(self.interval_s)
