"""Model versions: the lineage tree with each version's metrics; promote, roll back and register.

Each action asks for a confirmation first and then calls the same service the admin API calls, so
a refusal (a round running, say) is the API's own problem, shown as the page."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from fastapi import APIRouter, Request, Response
from starlette.datastructures import UploadFile

from coordinator.console.auth import CONSOLE, PageSession
from coordinator.console.forms import ACTOR, CsrfForm, UploadForm, note
from coordinator.console.web import ACTIVE_STATES, ConsoleRoute, render, see_other
from coordinator.deps import Ctx
from coordinator.deps import Session as Db
from coordinator.errors import InvalidConfig
from coordinator.routes.deadline import upload_deadline
from coordinator.routes.params import RowId
from coordinator.services import models as model_service
from coordinator.services import round_report
from coordinator.services import rounds as round_service
from storage.models import ModelVersion

router = APIRouter(prefix=CONSOLE, route_class=ConsoleRoute)
MAX_DEPTH = 8  # deeper branches are drawn at this indent; the "from vN" label still names the parent
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class TreeRow:
    version: ModelVersion
    depth: int
    branch: bool  # its parent has other children: it starts a branch
    evaluation: dict[str, float]


def lineage_rows(versions: Sequence[ModelVersion]) -> list[TreeRow]:
    """Depth-first, oldest child first. A single child stays at its parent's indent, so a long run of
    rounds reads as one column and only a real fork indents."""
    ids = {v.id for v in versions}
    children: dict[int | None, list[ModelVersion]] = defaultdict(list)
    for v in versions:
        children[v.parent_id if v.parent_id in ids else None].append(v)
    rows: list[TreeRow] = []
    stack = [(v, 0, False) for v in sorted(children[None], key=lambda v: v.id, reverse=True)]
    while stack:  # iterative: a lineage of thousands of rounds must not exhaust the interpreter's stack
        version, depth, branch = stack.pop()
        rows.append(TreeRow(version, min(depth, MAX_DEPTH), branch,
                            round_report.evaluation_of(version.metrics or {}, version.manifest)))
        kids = sorted(children[version.id], key=lambda v: v.id, reverse=True)
        fork = len(kids) > 1
        stack.extend((k, depth + 1 if fork else depth, fork) for k in kids)
    return rows


@router.get("/models")
async def models_page(request: Request, session: PageSession, db: Db, ctx: Ctx) -> Response:
    versions, served = await model_service.list_versions(db)
    current = await round_service.current(db, ctx)
    running = current if current is not None and current.state in ACTIVE_STATES else None
    return render(request, "models.html", session, rows=lineage_rows(versions), served=served, running=running)


@router.get("/models/rollback")
async def confirm_rollback(request: Request, session: PageSession, db: Db) -> Response:
    versions, served = await model_service.list_versions(db)
    current = next((v for v in versions if v.id == served), None)
    parent = current.parent_id if current is not None else None
    consequence = (f"Devices will train from version {parent} instead of {served}. Class embeddings written"
                   f" outside version {parent}'s lineage are dropped." if parent is not None
                   else "The served version has no parent: the API will refuse this.")
    return render(request, "confirm.html", session, title="Roll back the served model", consequence=consequence,
                  action=f"{CONSOLE}/models/rollback", back=f"{CONSOLE}/models", button="Roll back")


@router.post("/models/rollback")
async def rollback(session: PageSession, form: CsrfForm, db: Db) -> Response:
    await model_service.rollback(db, ACTOR)
    return see_other(f"{CONSOLE}/models")


@router.get("/models/{version_id}/promote")
async def confirm_promote(request: Request, version_id: RowId, session: PageSession, db: Db) -> Response:
    version = await model_service.get(db, version_id)
    _, served = await model_service.list_versions(db)
    return render(request, "confirm.html", session, title=f"Serve model version {version.id}",
                  consequence=f"Devices will train from version {version.id} instead of {served}. Class embeddings"
                  f" written outside version {version.id}'s lineage are dropped.",
                  action=f"{CONSOLE}/models/{version.id}/promote", back=f"{CONSOLE}/models", button="Promote")


@router.post("/models/{version_id}/promote")
async def promote(version_id: RowId, session: PageSession, form: CsrfForm, db: Db) -> Response:
    await model_service.promote(db, ACTOR, version_id)
    return see_other(f"{CONSOLE}/models")


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(CHUNK):
        yield chunk


@router.post("/models")
async def register(session: PageSession, form: UploadForm, db: Db, ctx: Ctx) -> Response:
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidConfig("choose a model file (safetensors) to upload")
        if form.get("confirm") != "yes":
            raise InvalidConfig("tick the confirmation to register the model")
        async with upload_deadline(ctx):
            await model_service.register(db, ctx, ACTOR, _chunks(upload), str(upload.size) if upload.size else None,
                                         note(form), form.get("serve") == "yes")
    finally:
        await form.close()
    return see_other(f"{CONSOLE}/models")
