"""Rounds: the filtered list, one round's report, and starting, stopping or cancelling a round."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from coordinator.console import charts
from coordinator.console.auth import CONSOLE, FragmentSession, PageSession
from coordinator.console.forms import ACTOR, CsrfForm, default_round_values, round_config
from coordinator.console.web import ACTIVE_STATES, ROUND_STATES, ConsoleRoute, render, see_other
from coordinator.deps import Ctx
from coordinator.deps import Session as Db
from coordinator.routes.params import RowId
from coordinator.schemas import RoundConfig
from coordinator.services import round_report
from coordinator.services import rounds as round_service
from coordinator.services.round_report import RoundReport
from coordinator.strategies.registry import STRATEGIES

router = APIRouter(prefix=CONSOLE, route_class=ConsoleRoute)
PAGE = 50
Filter = Annotated[str | None, Query(max_length=32)]


@router.get("/rounds")
async def rounds_page(request: Request, session: PageSession, db: Db, ctx: Ctx, state: Filter = None,
                      algorithm: Filter = None, before: Annotated[int | None, Query(ge=1)] = None) -> Response:
    rows, next_before = await round_service.page(db, ctx, state or None, algorithm or None, before, PAGE)
    return render(request, "rounds.html", session, rounds=rows, next_before=next_before, state=state or "",
                  algorithm=algorithm or "", states=ROUND_STATES, algorithms=await round_service.algorithms(db))


def _plots(report: RoundReport) -> dict[str, Any]:
    arrivals = [(t, float(i + 1)) for i, t in enumerate(sorted(report.arrivals_s))]
    robust = report.robust or {}
    return {
        "loss": charts.scatter(report.losses, "loss before local training", "loss after",
                               "client loss before and after", diagonal=True),
        "arrivals": charts.line_chart([charts.Series("accepted updates", arrivals)], "seconds after the start",
                                      "updates accepted", "accepted updates over time", markers=False,
                                      y_from_zero=True, width=360),
        "sizes": charts.histogram([float(s) for s in report.sizes], "bytes received per update",
                                  "bytes received"),
        "norms": charts.histogram(report.delta_norms, "L2 norm of the update (before clipping)",
                                  "update norms") if report.delta_norms else None,
        "refusals": charts.bars([(code, float(n)) for code, n in report.refusals], "refused submissions"),
        "collapse": charts.bars(sorted(report.collapse.items()), "collapse monitor") if report.collapse else None,
        "robust_bound": robust.get("norm_bound"),
    }


@router.get("/rounds/new")
async def new_round_form(request: Request, session: PageSession) -> Response:
    return render(request, "round_new.html", session, values=default_round_values(), errors=[],
                  known_algorithms=sorted(STRATEGIES))


@router.post("/rounds")
async def start_round(request: Request, session: PageSession, form: CsrfForm, db: Db, ctx: Ctx) -> Response:
    config, values, errors = round_config(form)
    if config is None:
        return render(request, "round_new.html", session, status=422, values=values, errors=errors,
                      known_algorithms=sorted(STRATEGIES))
    rnd = await round_service.start(db, ctx, ACTOR, config)
    return see_other(f"{CONSOLE}/rounds/{rnd.id}")


@router.get("/rounds/{round_id}")
async def round_page(request: Request, round_id: RowId, session: PageSession, db: Db, ctx: Ctx,
                     after: Annotated[uuid.UUID | None, Query()] = None) -> Response:
    report = await round_report.report(db, ctx, round_id)
    participants, next_after = await round_report.participants(db, round_id, after, PAGE)
    # JSONB keeps keys in its own order; show them in RoundConfig's, as the start form does.
    known = [k for k in RoundConfig.model_fields if k in report.round.config and k != "params"]
    config = [(k, report.round.config[k]) for k in known] + sorted(
        (k, v) for k, v in report.round.config.items() if k not in known and k != "params")
    return render(request, "round.html", session, r=report.round, report=report, plots=_plots(report), config=config,
                  participants=participants, next_after=next_after,
                  active=report.round.state in ACTIVE_STATES)


@router.get("/fragments/rounds/{round_id}")
async def round_fragment(request: Request, round_id: RowId, session: FragmentSession, db: Db, ctx: Ctx) -> Response:
    rnd = await round_service.describe(db, ctx, await round_service.get(db, round_id))
    return render(request, "round_progress.html", session, r=rnd,
                  active=rnd.state in ACTIVE_STATES)


_ACTIONS = {
    "stop": ("Stop collecting", "The round closes now: it aggregates what it has if the quorum is met, and fails"
             " otherwise. No further continuous rounds start."),
    "cancel": ("Cancel the round", "The round ends without a new model version; nothing it received is used."),
}


@router.get("/rounds/{round_id}/{action}")
async def confirm_round_action(request: Request, round_id: RowId, action: str, session: PageSession, db: Db,
                               ctx: Ctx) -> Response:
    if action not in _ACTIONS:
        return render(request, "error.html", session, status=404, code="not_found", title="Not found",
                      detail=f"no round action {action!r}", back=f"{CONSOLE}/rounds/{round_id}")
    rnd = await round_service.get(db, round_id)
    title, consequence = _ACTIONS[action]
    return render(request, "confirm.html", session, title=f"{title}: round {rnd.id}", consequence=consequence,
                  action=f"{CONSOLE}/rounds/{rnd.id}/{action}", back=f"{CONSOLE}/rounds/{rnd.id}", button=title)


@router.post("/rounds/{round_id}/stop")
async def stop_round(round_id: RowId, session: PageSession, form: CsrfForm, db: Db, ctx: Ctx) -> Response:
    await round_service.stop(db, ctx, ACTOR, round_id)
    ctx.wake_driver()
    return see_other(f"{CONSOLE}/rounds/{round_id}")


@router.post("/rounds/{round_id}/cancel")
async def cancel_round(round_id: RowId, session: PageSession, form: CsrfForm, db: Db, ctx: Ctx) -> Response:
    await round_service.cancel(db, ctx, ACTOR, round_id)
    return see_other(f"{CONSOLE}/rounds/{round_id}")
