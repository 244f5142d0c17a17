"""The round driver's side of a secure round: closing each SecAgg+ stage.

A secure round stays `collecting` through its stages (select -> advertise -> share_keys -> masked_input
-> unmask); the stage, its deadline and the server's protocol state are in `secagg_rounds`, the messages
in `secagg_messages` and the masked inputs are the round's updates. A stage closes when every device
expected at it answered, at its deadline, or when the operator stops the round; the devices that did not
answer are dropped exactly as `coordinator.secagg.protocol` says. Each close runs in one transaction under
the round row's exclusive lock (device messages take it shared), so a driver killed at any point leaves
either the stage before the close or the stage after it, and the next driver re-reads it from here.

After the unmasking stage closes the round is `aggregating` and coordinator/engine/secagg_sum.py unmasks.
Fewer survivors than the threshold at any close fails the round: no model is written."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import structlog
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.context import AppContext
from coordinator.metrics import ROUND_DURATION
from coordinator.secagg import protocol
from coordinator.secagg.errors import NotEnoughShares, SecAggProtocolError
from coordinator.secagg.params import neighbours_and_threshold
from coordinator.services import models as model_service
from coordinator.services.secagg.layout import round_layout
from coordinator.services.secagg.state import FORWARDED, UNMASK_REQUEST, server_round, settings_of, stage_of
from coordinator.strategies import make_strategy
from coordinator.strategies.dp import DpRoundPlan
from coordinator.strategies.dp_noise import noise_shares
from fedface_common.secagg.messages import AdvertiseKeys, ShareKeys, UnmaskResponse
from fedface_common.secagg.task import SecAggSettings, Stage, vector_length
from fedface_common.wire import RoundState
from storage.db import utcnow
from storage.models import Round, SecAggRound
from storage.repositories.rounds import RoundRepository
from storage.repositories.secagg import SecAggRepository
from storage.repositories.updates import UpdateRepository

log = structlog.get_logger("coordinator.secagg")


class StageFailed(Exception):
    """The round cannot go on (too few devices, a bad parameter choice): it fails with this reason."""


async def _answered(session: AsyncSession, rnd: Round, row: SecAggRound) -> tuple[int, int]:
    """(devices expected at the stage, devices that answered it)."""
    stage, state, repo = stage_of(row), server_round(row), SecAggRepository(session)
    if stage == Stage.SELECT:
        return int(rnd.config["target_devices"]), len(await repo.assigned(rnd.id))
    assert state is not None
    if stage == Stage.ADVERTISE:
        return len(state.params.devices), await repo.count(rnd.id, stage)
    if stage == Stage.SHARE_KEYS:
        return len(state.keys), await repo.count(rnd.id, stage)
    if stage == Stage.MASKED_INPUT:
        return len(state.shared or ()), await UpdateRepository(session).count(rnd.id)
    if stage == Stage.UNMASK:
        return len(state.masked or ()), await repo.count(rnd.id, stage)
    return 0, -1  # done: nothing to close


async def _due(session: AsyncSession, rnd: Round, row: SecAggRound, now: datetime) -> bool:
    if stage_of(row) == Stage.DONE:
        return False
    expected, answered = await _answered(session, rnd, row)
    return answered >= expected or now >= row.stage_deadline_at or rnd.stop_requested


async def step(ctx: AppContext, round_id: int) -> str:
    """Close the round's current stage if it is due; returns the round's state afterwards."""
    async with ctx.sessions() as session:  # look before locking, as the plain close does
        rnd = await RoundRepository(session).get(round_id)
        if rnd is None or rnd.state != RoundState.COLLECTING:
            return rnd.state if rnd else RoundState.FAILED
        row = await SecAggRepository(session).get(round_id)
        if row is not None and not await _due(session, rnd, row, utcnow()):
            return RoundState.COLLECTING
    async with ctx.sessions() as session, session.begin():
        rnd = await RoundRepository(session).get(round_id, lock=True)
        if rnd is None or rnd.state != RoundState.COLLECTING:
            return rnd.state if rnd else RoundState.FAILED
        repo = SecAggRepository(session)
        row = await repo.get(round_id, lock=True)
        if row is None:  # selection runs for the round's own deadline, as a plain round collects
            row = await repo.create(round_id, Stage.SELECT, rnd.deadline_at)
        now = utcnow()
        if not await _due(session, rnd, row, now):
            return RoundState.COLLECTING
        stage = stage_of(row)
        try:
            await _close(session, rnd, row, settings_of(rnd), now)
        except (SecAggProtocolError, StageFailed) as exc:
            _fail(rnd, row, f"secure aggregation failed at the {stage} stage: {exc}", now)
        state = rnd.state
    if state != RoundState.COLLECTING:
        await ctx.state.cache_current_round(None)
    else:
        ctx.wake_driver()  # the next stage may already be complete (every device answered at once)
    return state


def _fail(rnd: Round, row: SecAggRound, reason: str, now: datetime) -> None:
    rnd.state, rnd.closed_at, rnd.finished_at, rnd.continuous_remaining = RoundState.FAILED, now, now, 0
    rnd.failure_reason = reason[:2000]
    rnd.metrics = {**rnd.metrics, "secagg": row.metrics}
    ROUND_DURATION.labels(state=RoundState.FAILED).observe((now - rnd.created_at).total_seconds())
    log.warning("secagg_round_failed", round_id=rnd.id, reason=reason)


async def _advance(session: AsyncSession, rnd: Round, row: SecAggRound, stage: Stage, state: protocol.ServerRound,
                   settings: SecAggSettings, now: datetime, answered: dict[str, int | float | str]) -> None:
    deadline = now + timedelta(seconds=settings.stage_s)
    # The round's deadline follows its stages: intake and check-in read it as "the current stage's".
    rnd.deadline_at = max(rnd.deadline_at, deadline)
    metrics = {**row.metrics, **answered}
    await SecAggRepository(session).advance(row, stage, deadline, state.model_dump(mode="json"), metrics)
    log.info("secagg_stage", round_id=rnd.id, stage=stage, **answered)


def _parsed(rows: list[tuple[uuid.UUID, str]], model: type[AdvertiseKeys] | type[ShareKeys] | type[UnmaskResponse],
            ) -> list[tuple[str, AdvertiseKeys | ShareKeys | UnmaskResponse]]:
    return [(str(d), model.model_validate_json(b)) for d, b in rows]


async def _close(session: AsyncSession, rnd: Round, row: SecAggRound, settings: SecAggSettings,
                 now: datetime) -> None:
    repo, stage, state = SecAggRepository(session), stage_of(row), server_round(row)
    if stage == Stage.SELECT:
        await _close_selection(session, rnd, row, settings, now)
        return
    assert state is not None
    if stage == Stage.ADVERTISE:
        adverts = _parsed(list(await repo.messages(rnd.id, stage)), AdvertiseKeys)
        state = protocol.close_advertise(state.params, adverts)  # type: ignore[arg-type]
        await _advance(session, rnd, row, Stage.SHARE_KEYS, state, settings, now, {"advertised": len(state.keys)})
    elif stage == Stage.SHARE_KEYS:
        shares = _parsed(list(await repo.messages(rnd.id, stage)), ShareKeys)
        state, forwards = protocol.close_share_keys(state, shares)  # type: ignore[arg-type]
        await repo.add_messages(rnd.id, FORWARDED, {uuid.UUID(d): f.model_dump_json() for d, f in forwards.items()})
        await _advance(session, rnd, row, Stage.MASKED_INPUT, state, settings, now,
                       {"shared_keys": len(state.shared or ())})
    elif stage == Stage.MASKED_INPUT:
        shared = set(state.shared or ())
        senders = [str(u.device_id) for u in await UpdateRepository(session).for_round(rnd.id)
                   if str(u.device_id) in shared]
        state, requests = protocol.close_masked_input(state, senders)
        await repo.add_messages(rnd.id, UNMASK_REQUEST,
                                {uuid.UUID(d): r.model_dump_json() for d, r in requests.items()})
        await _advance(session, rnd, row, Stage.UNMASK, state, settings, now, {"masked_inputs": len(senders)})
    elif stage == Stage.UNMASK:
        responses = _parsed(list(await repo.messages(rnd.id, stage)), UnmaskResponse)
        # Checked here so that a round short of shares fails now, with the reason, instead of at unmasking.
        deficits = protocol.share_deficits(state, responses)  # type: ignore[arg-type]
        if deficits:
            raise NotEnoughShares(deficits, state.params.threshold)
        await SecAggRepository(session).advance(row, Stage.DONE, now, None,
                                                {**row.metrics, "unmask_responses": len(responses)})
        rnd.state, rnd.closed_at = RoundState.AGGREGATING, now
        log.info("secagg_unmask_closed", round_id=rnd.id, responses=len(responses))


async def _close_selection(session: AsyncSession, rnd: Round, row: SecAggRound, settings: SecAggSettings,
                           now: datetime) -> None:
    """Fix the device list and the round's public parameters (k, t, the scales, graph seed)."""
    devices = [str(d) for d in await SecAggRepository(session).assigned(rnd.id)]
    n, quorum = len(devices), max(2, int(rnd.config["min_devices"]))
    if n < quorum:
        raise StageFailed(f"{n} devices selected, {quorum} needed")
    strategy = make_strategy(rnd.algorithm, rnd.config.get("params"))
    version = await model_service.get(session, rnd.base_version_id)
    length = vector_length(round_layout(strategy, version))
    try:
        if settings.neighbours is not None and settings.threshold is not None:
            k, t, rule = settings.neighbours, settings.threshold, "override"
        else:
            k, t, rule = neighbours_and_threshold(n, settings.dropout)
        min_survivors = min(n, max(t, quorum))
        noise = _device_noise(rnd, min_survivors)
        params = protocol.new_round(rnd.id, devices, vector_length=length, clip_norm=settings.clip_norm,
                                    dropout=settings.dropout, k_and_t=(k, t), min_survivors=min_survivors,
                                    noise_stddev=noise, statistics_clip_norm=settings.statistics_clip_norm,
                                    max_weight=settings.max_weight)
    except (ValueError, ValidationError) as exc:
        raise StageFailed(f"no SecAgg+ parameters for {n} devices: {exc}") from exc
    await _advance(session, rnd, row, Stage.ADVERTISE, protocol.ServerRound(params=params), settings, now,
                   {"selected": n, "neighbours": k, "threshold": t, "graph": rule, "vector_length": length,
                    **({"device_noise_stddev": noise} if noise else {})})


def _device_noise(rnd: Round, min_survivors: int) -> float:
    """Each device's share of a distributed-DP round's noise, from the plan stored when the round started (0
    without it). It is split over min_survivors because that is the fewest inputs the server will unmask: the
    masked-input stage fails the round below it, and each device refuses to unmask a smaller sum."""
    if rnd.dp_state is None:
        return 0.0
    plan = DpRoundPlan.from_json(rnd.dp_state)
    if plan.mode != "distributed":
        return 0.0
    return noise_shares(plan.mode, plan.sum_noise_multiplier * plan.clip, min_survivors).device_stddev
