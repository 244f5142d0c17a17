"""Trends across rounds and model versions: the collapse monitor, robust aggregation's clipping and
whatever evaluation was recorded, each as an SVG plot."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from fastapi import APIRouter, Request, Response
from markupsafe import Markup

from coordinator.console import charts
from coordinator.console.auth import CONSOLE, PageSession
from coordinator.console.web import ConsoleRoute, render
from coordinator.deps import Session as Db
from coordinator.services import round_report
from coordinator.services.round_report import COLLAPSE_KEYS, TrendPoint, VersionEvaluation

router = APIRouter(prefix=CONSOLE, route_class=ConsoleRoute)
ROUNDS = 200


def _series(points: list[TrendPoint], keys: Sequence[str]) -> list[charts.Series]:
    return [charts.Series(k, [(float(p.round_id), p.values[k]) for p in points if k in p.values]) for k in keys]


def _version_series(versions: list[VersionEvaluation]) -> list[charts.Series]:
    by_key: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for v in versions:
        for key, value in v.values.items():
            by_key[key].append((float(v.version_id), value))
    return [charts.Series(k, pts) for k, pts in sorted(by_key.items())]


@router.get("/trends")
async def trends_page(request: Request, session: PageSession, db: Db) -> Response:
    trends = await round_report.trends(db, ROUNDS)
    points = trends.rounds
    present = {k for p in points for k in p.values}
    collapse = [k for k in COLLAPSE_KEYS if k in present and "offdiag_cos" in k]
    spreadout = [k for k in COLLAPSE_KEYS if k in present and k.startswith("spreadout")]
    robust = [k for k in ("robust.clipped", "robust.capped") if k in present]
    evaluation = sorted(k for k in present if k.startswith("evaluation."))
    plots: list[tuple[str, Markup]] = [
        ("Collapse monitor: mean cosine between class embeddings (1 = every identity on one point)",
         charts.line_chart(_series(points, collapse), "round", "mean off-diagonal cosine", "collapse monitor")),
        ("Spreadout regulariser before and after the server's steps",
         charts.line_chart(_series(points, spreadout), "round", "spreadout loss", "spreadout")),
        ("Robust aggregation: updates clipped to the norm bound and sample counts capped",
         charts.line_chart(_series(points, robust), "round", "updates", "robust aggregation", y_from_zero=True)),
        ("Robust aggregation: the norm bound each round folded with",
         charts.line_chart(_series(points, ["robust.norm_bound"]), "round", "L2 norm bound", "norm bound")),
        ("Evaluation recorded with rounds",
         charts.line_chart(_series(points, evaluation), "round", "value", "round evaluation")),
        ("Evaluation recorded with model versions (calibrated verification thresholds, evaluations)",
         charts.line_chart(_version_series(trends.versions), "model version", "value", "version evaluation")),
    ]
    return render(request, "trends.html", session, plots=plots, rounds=len(points), versions=trends.versions)
