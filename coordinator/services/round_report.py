"""What happened in a round and across rounds, read for people: participants, refusals by problem
code, the devices' losses, bytes and timing, the server's collapse monitor and robust bounds.

Only rows and counters already written by intake and aggregation are read here; nothing is
recomputed from blobs."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.context import AppContext
from coordinator.schemas import RoundOut
from coordinator.services import models as model_service
from coordinator.services import rounds as round_service
from fedface_common.wire import RoundState
from storage.repositories.rounds import Participant, RoundRepository
from storage.repositories.updates import UpdateRepository, UpdateTotals

# The collapse monitor and the spreadout regulariser, in the order they are best read.
COLLAPSE_KEYS = ("w_mean_offdiag_cos", "submitted_mean_offdiag_cos", "w_mean_offdiag_cos_after_spreadout",
                 "spreadout_before", "spreadout_after")
# Beyond this many updates a round's plots show the first ones; the totals still count them all.
FACTS_LIMIT = 5000
EVALUATION_KEY = "evaluation"


@dataclass(frozen=True)
class Durations:
    collecting_s: float | None
    aggregating_s: float | None
    aggregate_s: float | None
    total_s: float | None


@dataclass
class RoundReport:
    round: RoundOut
    refusals: list[tuple[str, int]]
    totals: UpdateTotals
    losses: list[tuple[float, float]]
    mean_loss_before: float | None
    mean_loss_after: float | None
    arrivals_s: list[float]
    delta_norms: list[float]
    sizes: list[int]
    sampled: bool
    durations: Durations
    robust: dict[str, Any] | None
    collapse: dict[str, float]
    evaluation: dict[str, float]
    other_metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrendPoint:
    round_id: int
    version_id: int | None
    finished_at: datetime | None
    values: dict[str, float]


@dataclass(frozen=True)
class VersionEvaluation:
    version_id: int
    parent_id: int | None
    values: dict[str, float]


@dataclass(frozen=True)
class Trends:
    rounds: list[TrendPoint]
    versions: list[VersionEvaluation]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def numbers(metrics: Mapping[str, Any] | None, keys: Sequence[str] | None = None) -> dict[str, float]:
    """The numeric entries of METRICS (those among KEYS, when given)."""
    if not isinstance(metrics, Mapping):
        return {}
    found = {str(k): _number(v) for k, v in metrics.items() if keys is None or k in keys}
    return {k: v for k, v in found.items() if v is not None}


def evaluation_of(metrics: Mapping[str, Any], manifest: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Evaluation numbers recorded for a round or version: an `evaluation` object in its metrics, and
    the verification thresholds a calibration wrote into the model's manifest."""
    found = numbers(metrics.get(EVALUATION_KEY))
    thresholds = (manifest or {}).get("thresholds")
    found.update({f"threshold@far={far}": v for far, v in numbers(thresholds).items()})
    return found


def _seconds(later: datetime | None, earlier: datetime | None) -> float | None:
    return (later - earlier).total_seconds() if later is not None and earlier is not None else None


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


async def report(session: AsyncSession, ctx: AppContext, round_id: int) -> RoundReport:
    rnd = await round_service.get(session, round_id)
    out = await round_service.describe(session, ctx, rnd)
    updates = UpdateRepository(session)
    facts = await updates.facts(round_id, FACTS_LIMIT)
    totals = await updates.totals(round_id)
    losses = [(float(b), float(a)) for b, a in ((_number(f.client_metrics.get("loss_before")),
                                                  _number(f.client_metrics.get("loss_after"))) for f in facts)
              if b is not None and a is not None]
    metrics = dict(rnd.metrics or {})
    robust = metrics.get("robust") if isinstance(metrics.get("robust"), dict) else None
    if robust is None and rnd.bounds:  # fixed while collecting, before any robust metrics exist
        robust = dict(rnd.bounds)
    shown = {*COLLAPSE_KEYS, "robust", EVALUATION_KEY, "aggregate_s"}
    refusals = sorted((await ctx.state.refusals(round_id)).items(), key=lambda kv: (-kv[1], kv[0]))
    return RoundReport(
        round=out, refusals=refusals, totals=totals, losses=losses,
        mean_loss_before=_mean([b for b, _ in losses]), mean_loss_after=_mean([a for _, a in losses]),
        arrivals_s=[max(0.0, (f.created_at - rnd.created_at).total_seconds()) for f in facts],
        delta_norms=[float(f.delta_norm) for f in facts if f.delta_norm is not None],
        sizes=[f.size_bytes for f in facts], sampled=totals.count > len(facts),
        durations=Durations(
            collecting_s=_seconds(rnd.closed_at, rnd.created_at),
            aggregating_s=_seconds(rnd.finished_at, rnd.closed_at),
            aggregate_s=_number(metrics.get("aggregate_s")), total_s=_seconds(rnd.finished_at, rnd.created_at)),
        robust=robust, collapse=numbers(metrics, COLLAPSE_KEYS), evaluation=evaluation_of(metrics),
        other_metrics={k: v for k, v in metrics.items() if k not in shown},
    )


async def participants(session: AsyncSession, round_id: int, after: uuid.UUID | None,
                       limit: int) -> tuple[Sequence[Participant], uuid.UUID | None]:
    """LIMIT of the round's assigned devices after device id AFTER, and the next page's cursor."""
    await round_service.get(session, round_id)
    rows = list(await RoundRepository(session).participants(round_id, after, limit + 1))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, rows[-1].device_id if more and rows else None


async def trends(session: AsyncSession, limit: int = 200) -> Trends:
    """The collapse monitor, robust counts and evaluations of the last LIMIT committed rounds (oldest first),
    and the evaluations recorded for model versions."""
    committed = list(await RoundRepository(session).page(RoundState.COMMITTED, None, None, limit))
    points = []
    for rnd in reversed(committed):
        metrics = dict(rnd.metrics or {})
        values = numbers(metrics, COLLAPSE_KEYS)
        robust = metrics.get("robust")
        values.update({f"robust.{k}": v for k, v in numbers(robust, ("clipped", "capped", "norm_bound")).items()})
        values.update({f"evaluation.{k}": v for k, v in evaluation_of(metrics).items()})
        points.append(TrendPoint(rnd.id, rnd.result_version_id, rnd.finished_at, values))
    versions, _ = await model_service.list_versions(session)
    evaluated = [VersionEvaluation(v.id, v.parent_id, evaluation_of(v.metrics or {}, v.manifest)) for v in versions]
    return Trends(points, [v for v in evaluated if v.values])
