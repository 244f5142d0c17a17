"""The scheduled blob collection: every replica runs this task, one of them collects.

The Redis lease is taken for a whole interval and renewed by its holder at its
next pass, so the fleet collects about once per interval whatever the number
of replicas; when the holder dies its lease expires and another replica takes
over. Two passes at once would still be safe (each removes only what it has
just re-checked, see services/blob_gc.py); the lease saves the doubled work."""

from __future__ import annotations

import structlog

from coordinator.context import AppContext
from coordinator.engine.periodic import PeriodicTask
from coordinator.schemas import BlobGcReport
from coordinator.services import blob_gc

log = structlog.get_logger("coordinator.blob_collector")
LEASE = "blob-gc"


class BlobCollector(PeriodicTask):
    """One pass per interval across the fleet. On stop the lease is left to expire: a replica restarting does
    not make the fleet collect again early."""

    failure_event = "blob_gc_failed"
    run_at_start = True

    def __init__(self, ctx: AppContext) -> None:
        super().__init__()
        self.ctx = ctx

    @property
    def interval_s(self) -> float:
        return self.ctx.settings.blob_gc_interval_s

    async def run_pass(self) -> BlobGcReport | None:
        return await self.run_once()

    async def run_once(self) -> BlobGcReport | None:
        """A pass if this replica holds (or takes) the lease; None otherwise."""
        ctx = self.ctx
        if not await ctx.state.acquire_or_renew_lease(LEASE, ctx.replica_id, ctx.settings.blob_gc_interval_s):
            return None
        return await blob_gc.collect(ctx.sessions, ctx.blobs, blob_gc.GcPolicy.of(ctx.settings))
