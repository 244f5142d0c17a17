"""The round driver: the one process (per fleet) that moves rounds through
collecting -> aggregating -> committed | failed.

Every coordinator process runs a driver, but only the holder of the Redis
lease acts; a dead holder's lease expires after `lease_ttl_s` and another
process takes over. All round state is in Postgres, so the new holder
continues exactly where the old one stopped, including an interrupted
aggregation."""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from coordinator.context import AppContext
from coordinator.engine import secagg_stages
from coordinator.engine.aggregate import aggregate_round
from coordinator.metrics import IS_DRIVER, ROUND_DURATION
from coordinator.services.secagg.state import is_secure
from fedface_common.wire import ACTIVE_ROUND_STATES, RoundState
from storage.db import utcnow
from storage.models import Round
from storage.repositories.rounds import RoundRepository
from storage.repositories.updates import UpdateRepository

log = structlog.get_logger("coordinator.driver")
LEASE = "round-driver"


class RoundDriver:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.is_leader = False
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._lease_loop()), asyncio.create_task(self._tick_loop())]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.is_leader:
            with contextlib.suppress(Exception):
                await self.ctx.state.release_lease(LEASE, self.ctx.replica_id)
        with contextlib.suppress(Exception):
            await self.ctx.state.forget_replica(self.ctx.replica_id)
        self.is_leader = False
        IS_DRIVER.set(0)

    async def _lease_loop(self) -> None:
        ttl = self.ctx.settings.lease_ttl_s
        while True:
            try:
                leader = await self.ctx.state.acquire_or_renew_lease(LEASE, self.ctx.replica_id, ttl)
            except Exception as exc:  # Redis down: act as a follower until it is back
                log.warning("lease_error", error=str(exc))
                leader = False
            if leader != self.is_leader:
                log.info("driver_lease", leader=leader, replica=self.ctx.replica_id)
                if leader:
                    self.ctx.wake_driver()
            self.is_leader = leader
            IS_DRIVER.set(1 if leader else 0)
            with contextlib.suppress(Exception):  # the console's list of live replicas; never worth a lease
                await self.ctx.state.heartbeat(self.ctx.replica_id)
            await asyncio.sleep(ttl / 3)

    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        last = -float("inf")
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ctx.wake.wait(), timeout=self.ctx.settings.tick_interval_s)
            # Every accepted update wakes the driver; coalesce a burst of wakes
            # into one pass instead of a pass (and a round-row lock) per update.
            gap = last + self.ctx.settings.tick_min_gap_s - loop.time()
            if gap > 0:
                await asyncio.sleep(gap)
            self.ctx.wake.clear()
            if not self.is_leader:
                continue
            last = loop.time()
            try:
                await self.tick()
            except Exception:
                log.exception("driver_tick_failed")

    async def tick(self) -> None:
        """One pass over the active rounds. Safe to call from tests directly."""
        async with self.ctx.sessions() as session:
            rounds = await RoundRepository(session).in_states(ACTIVE_ROUND_STATES)
            active = [(r.id, r.state, is_secure(r)) for r in rounds]
        for round_id, state, secure in active:
            if state == RoundState.COLLECTING:
                # A secure round collects through its SecAgg+ stages, each closed on its own terms.
                state = await (secagg_stages.step(self.ctx, round_id) if secure else self._maybe_close(round_id))
            if state == RoundState.AGGREGATING:
                await aggregate_round(self.ctx, round_id)

    async def _maybe_close(self, round_id: int) -> str:
        # Look before locking: the close takes the round row FOR UPDATE, which
        # queues every submission's share lock behind it. Taken on every wake
        # during intake, that lock stalled uploads in convoys; the conditions
        # only ever become true (more updates, a later clock, a stop), so an
        # unlocked "not yet" is safe and the next wake looks again.
        async with self.ctx.sessions() as session:
            rnd = await RoundRepository(session).get(round_id)
            if rnd is None or rnd.state != RoundState.COLLECTING:
                return rnd.state if rnd else RoundState.FAILED
            if not self._due(rnd, await UpdateRepository(session).count(round_id)):
                return RoundState.COLLECTING
        async with self.ctx.sessions() as session, session.begin():
            rnd = await RoundRepository(session).get(round_id, lock=True)
            if rnd is None or rnd.state != RoundState.COLLECTING:
                return rnd.state if rnd else RoundState.FAILED
            accepted = await UpdateRepository(session).count(round_id)
            now = utcnow()
            target, quorum = int(rnd.config["target_devices"]), int(rnd.config["min_devices"])
            closing = rnd.stop_requested or now >= rnd.deadline_at
            if accepted >= target or (closing and accepted >= quorum):
                rnd.state, rnd.closed_at = RoundState.AGGREGATING, now
                log.info("round_closed", round_id=round_id, accepted=accepted)
            elif closing:
                rnd.state, rnd.closed_at, rnd.finished_at = RoundState.FAILED, now, now
                rnd.continuous_remaining = 0
                rnd.failure_reason = f"quorum not met: {accepted} accepted, {quorum} required"
                ROUND_DURATION.labels(state=RoundState.FAILED).observe((now - rnd.created_at).total_seconds())
                log.warning("round_failed", round_id=round_id, accepted=accepted, quorum=quorum)
            state = rnd.state
        if state != RoundState.COLLECTING:
            await self.ctx.state.cache_current_round(None)
        return state

    @staticmethod
    def _due(rnd: Round, accepted: int) -> bool:
        """Whether the round has to leave `collecting`: target reached, or deadline or stop."""
        return (accepted >= int(rnd.config["target_devices"]) or rnd.stop_requested
                or utcnow() >= rnd.deadline_at)
