"""Operator actions on rounds: start, stop, cancel, list with live counts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.context import AppContext
from coordinator.errors import InvalidConfig, InvalidRoundState, NoServedModel, RoundActive, RoundNotFound
from coordinator.schemas import RoundConfig, RoundOut
from coordinator.services import models as model_service
from coordinator.services import privacy as privacy_service
from coordinator.strategies import make_strategy
from coordinator.strategies.base import StrategyConfigError
from fedface_common.wire import RoundState
from storage.db import utcnow
from storage.models import Round
from storage.repositories.audit import AuditRepository
from storage.repositories.models_repo import ModelVersionRepository
from storage.repositories.rounds import RoundCounts, RoundRepository


async def create_round(session: AsyncSession, config: RoundConfig, base_version_id: int, remaining: int,
                       epsilon_budget: float | None = None) -> Round:
    """Raises PrivacyBudgetExhausted, before writing anything, when a DP round would exceed the budget."""
    dp_state = await privacy_service.plan(session, config, epsilon_budget)
    now = utcnow()
    rnd = Round(state=RoundState.COLLECTING, algorithm=config.algorithm, config=config.model_dump(mode="json"),
                base_version_id=base_version_id, continuous_remaining=remaining, created_at=now,
                deadline_at=now + timedelta(seconds=config.deadline_s), metrics={})
    if dp_state is not None:  # left unset otherwise: SQL NULL, not a JSON null
        rnd.dp_state = dp_state
    return await RoundRepository(session).add(rnd)


async def start(session: AsyncSession, ctx: AppContext, actor: str, config: RoundConfig) -> Round:
    try:
        strategy = make_strategy(config.algorithm, config.params)
    except StrategyConfigError as exc:
        raise InvalidConfig(str(exc)) from exc
    served = await ModelVersionRepository(session).served_id(lock=True)
    if served is None:
        raise NoServedModel("register a model version first")
    version = await ModelVersionRepository(session).get(served)
    assert version is not None
    if strategy.ships_class_centres and version.class_centres_sha256 is None:
        raise InvalidConfig(f"{config.algorithm} needs class centres attached to model version {served}")
    try:  # what the updates must hold depends on the model too (e.g. embedding_lda_dims <= its width)
        model_service.update_spec(strategy, version)
    except ValueError as exc:
        raise InvalidConfig(f"{config.algorithm} cannot train model version {served}: {exc}") from exc
    rounds = RoundRepository(session)
    if await rounds.active() is not None:
        raise RoundActive()
    rnd = await create_round(session, config, served, config.continuous_rounds, ctx.settings.dp_epsilon_budget)
    await AuditRepository(session).record(actor, "round.start", str(rnd.id), config=rnd.config)
    await ctx.state.cache_current_round(None)
    return rnd


async def get(session: AsyncSession, round_id: int, lock: bool = False) -> Round:
    rnd = await RoundRepository(session).get(round_id, lock=lock)
    if rnd is None:
        raise RoundNotFound(f"round {round_id} does not exist")
    return rnd


async def stop(session: AsyncSession, ctx: AppContext, actor: str, round_id: int) -> Round:
    """Close collection now: the driver aggregates if the quorum is met, else fails the round."""
    rnd = await get(session, round_id, lock=True)
    if rnd.state != RoundState.COLLECTING:
        raise InvalidRoundState(f"round {round_id} is {rnd.state}")
    rnd.stop_requested = True
    rnd.continuous_remaining = 0
    await AuditRepository(session).record(actor, "round.stop", str(round_id))
    return rnd


async def cancel(session: AsyncSession, ctx: AppContext, actor: str, round_id: int) -> Round:
    """Abandon a round that has not committed. An aggregating one can be cancelled too, so that nothing a
    device sent can hold a round open: the aggregation's commit re-checks the state under the row lock."""
    rnd = await get(session, round_id, lock=True)
    if rnd.state not in (RoundState.COLLECTING, RoundState.AGGREGATING):
        raise InvalidRoundState(f"round {round_id} is {rnd.state}; only an active round can be cancelled")
    now = utcnow()
    rnd.state, rnd.closed_at, rnd.finished_at, rnd.continuous_remaining = RoundState.CANCELLED, now, now, 0
    await AuditRepository(session).record(actor, "round.cancel", str(round_id))
    await ctx.state.cache_current_round(None)
    return rnd


async def describe(session: AsyncSession, ctx: AppContext, rnd: Round) -> RoundOut:
    counts = await RoundRepository(session).counts(rnd.id)
    return _out(rnd, counts, await ctx.state.get_count("round", rnd.id, "rejected"))


def _out(rnd: Round, counts: RoundCounts, rejected: int) -> RoundOut:
    return RoundOut(
        id=rnd.id, state=rnd.state, algorithm=rnd.algorithm, config=rnd.config, base_version_id=rnd.base_version_id,
        result_version_id=rnd.result_version_id, continuous_remaining=rnd.continuous_remaining,
        created_at=rnd.created_at, deadline_at=rnd.deadline_at, closed_at=rnd.closed_at,
        finished_at=rnd.finished_at, failure_reason=rnd.failure_reason, metrics=rnd.metrics, privacy=rnd.dp_state,
        selected=counts.selected, accepted=counts.submitted, rejected=rejected, submitted=counts.submitted + rejected,
    )


async def describe_many(session: AsyncSession, ctx: AppContext, rounds: Sequence[Round]) -> list[RoundOut]:
    """`describe` for a page of rounds, with their counts read in two queries rather than two per round."""
    counts = await RoundRepository(session).counts_many([r.id for r in rounds])
    return [_out(r, counts[r.id], await ctx.state.get_count("round", r.id, "rejected")) for r in rounds]


async def list_rounds(session: AsyncSession, ctx: AppContext, limit: int) -> Sequence[RoundOut]:
    return [await describe(session, ctx, r) for r in await RoundRepository(session).list(limit)]


async def page(session: AsyncSession, ctx: AppContext, state: str | None, algorithm: str | None,
               before_id: int | None, limit: int) -> tuple[list[RoundOut], int | None]:
    """LIMIT rounds, newest first, below BEFORE_ID; and the cursor of the next page (None on the last)."""
    rows = list(await RoundRepository(session).page(state, algorithm, before_id, limit + 1))
    more = len(rows) > limit
    rows = rows[:limit]
    return await describe_many(session, ctx, rows), rows[-1].id if more and rows else None


async def current(session: AsyncSession, ctx: AppContext) -> RoundOut | None:
    """The active round, else the most recent one; None before the first round."""
    repo = RoundRepository(session)
    rnd = await repo.active() or await repo.latest()
    return await describe(session, ctx, rnd) if rnd is not None else None


async def algorithms(session: AsyncSession) -> Sequence[str]:
    """The algorithms rounds have run, for filtering."""
    return await RoundRepository(session).algorithms()
