"""Device check-in: hand out tasks, with pace steering.

When more devices check in than a round needs, up to target x over-selection
are selected and the rest are told when to come back, spread uniformly over a
window so that they do not all return in the same second."""

from __future__ import annotations

import math
import random
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.context import AppContext
from coordinator.errors import RateLimited
from coordinator.metrics import CHECKINS
from coordinator.services.secagg import tasks as secagg_tasks
from coordinator.services.secagg.state import is_secure
from coordinator.strategies import make_strategy
from fedface_common.wire import CLASS_CENTRES_TENSOR, CheckInResponse, RoundState, Task, TrainingConfig
from storage.db import utcnow
from storage.models import Device, Round
from storage.repositories.devices import DeviceRepository
from storage.repositories.embeddings import ClassEmbeddingRepository
from storage.repositories.models_repo import ModelVersionRepository
from storage.repositories.rounds import RoundRepository
from storage.repositories.updates import UpdateRepository

NO_ROUND = "none"


def _wait(seconds: float, outcome: str) -> CheckInResponse:
    CHECKINS.labels(outcome=outcome).inc()
    return CheckInResponse(status="wait", retry_after_s=round(max(1.0, seconds), 1))


def _spread(base_s: float, window_s: float) -> float:
    return base_s + random.uniform(0.0, window_s)


def _until(deadline: datetime, now: datetime) -> float:
    return max(0.0, (deadline - now).total_seconds())


async def _task(session: AsyncSession, rnd: Round, device: Device) -> CheckInResponse:
    version = await ModelVersionRepository(session).get(rnd.base_version_id)
    assert version is not None
    strategy = make_strategy(rnd.algorithm, rnd.config.get("params"))
    cfg = rnd.config
    training = TrainingConfig(
        algorithm=rnd.algorithm, local_epochs=cfg["local_epochs"], batch_size=cfg["batch_size"],
        learning_rate=cfg["learning_rate"], optimizer=cfg["optimizer"], momentum=cfg["momentum"],
        weight_decay=cfg["weight_decay"], params=strategy.client_params(),
    )
    has_row = strategy.uses_class_embeddings and await ClassEmbeddingRepository(session).exists(device.id)
    extra = {CLASS_CENTRES_TENSOR: version.class_centres_sha256} if strategy.ships_class_centres and \
        version.class_centres_sha256 else {}
    secagg = await secagg_tasks.task_for(session, rnd, device.id, strategy, version) if strategy.secure else None
    CHECKINS.labels(outcome="task").inc()
    return CheckInResponse(status="task", task=Task(
        round_id=rnd.id, model_version=version.id, model_sha256=version.blob_sha256, deadline=rnd.deadline_at,
        training=training, has_class_embedding=has_row, extra_blobs=extra, secagg=secagg,
    ))


async def check_in(session: AsyncSession, ctx: AppContext, device: Device) -> CheckInResponse:
    settings = ctx.settings
    if await ctx.state.hit_rate_limit("checkin", str(device.id), settings.checkin_rate_per_min):
        CHECKINS.labels(outcome="rate_limited").inc()
        raise RateLimited("too many check-ins", retry_after_s=60)
    now = utcnow()
    await DeviceRepository(session).touch(device.id, now)
    await ctx.state.incr("checkins")

    # The cached answer spares the database when no round runs (the common case for an idle fleet).
    if await ctx.state.cached_current_round() == NO_ROUND:
        return _wait(_spread(settings.idle_retry_s, settings.idle_retry_s), "idle")
    rounds = RoundRepository(session)
    active = await rounds.active()
    if active is None:
        await ctx.state.cache_current_round(NO_ROUND)
        return _wait(_spread(settings.idle_retry_s, settings.idle_retry_s), "idle")
    # Lock the round: assignments are counted and inserted under it, so the
    # over-selection cap holds with many concurrent check-ins.
    rnd = await rounds.get(active.id, lock=True)
    assert rnd is not None
    remaining = _until(rnd.deadline_at, now)
    if rnd.state != RoundState.COLLECTING or rnd.stop_requested or remaining <= 0:
        return _wait(_spread(settings.idle_retry_s, settings.idle_retry_s), "closing")
    window = max(settings.idle_retry_s, float(rnd.config["deadline_s"]) / 2)
    secure = is_secure(rnd)
    if await rounds.assignment(rnd.id, device.id) is not None:
        # A secure round's device comes back after its upload: the unmasking stage follows it.
        if not secure and await UpdateRepository(session).find(rnd.id, device.id) is not None:
            return _wait(_spread(remaining, window), "done")
        return await _task(session, rnd, device)
    if secure and not await secagg_tasks.selecting(session, rnd.id):
        return _wait(_spread(remaining, window), "full")  # its device list is fixed
    cap = math.ceil(int(rnd.config["target_devices"]) * float(rnd.config["over_selection"]))
    if (await rounds.counts(rnd.id)).selected >= cap:
        return _wait(_spread(remaining, window), "full")
    await rounds.assign(rnd.id, device.id)
    return await _task(session, rnd, device)
