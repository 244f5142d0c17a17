"""The scheduled blob collection: every replica runs this task, one of them collects.

The Redis lease is taken for a whole interval and renewed by its holder at its
next pass, so the fleet collects about once per interval whatever the number
of replicas; when the holder dies its lease expires and another replica takes
over. Two passes at once would still be safe (each removes only what it has
just re-checked, see services/blob_gc.py); the lease saves the doubled work."""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from coordinator.context import AppContext
from coordinator.schemas import BlobGcReport
from coordinator.services import blob_gc

log = structlog.get_logger("coordinator.blob_collector")
LEASE = "blob-gc"


class BlobCollector:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        # The lease is left to expire: a replica restarting does not make the fleet collect again early.
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:  # Redis, the database or the store unreachable: try again next interval
                log.exception("blob_gc_failed")
            await asyncio.sleep(self.ctx.settings.blob_gc_interval_s)

    async def run_once(self) -> BlobGcReport | None:
        """A pass if this replica holds (or takes) the lease; None otherwise."""
        ctx = self.ctx
        if not await ctx.state.acquire_or_renew_lease(LEASE, ctx.replica_id, ctx.settings.blob_gc_interval_s):
            return None
        return await blob_gc.collect(ctx.sessions, ctx.blobs, blob_gc.GcPolicy.of(ctx.settings))
