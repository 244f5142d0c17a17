"""The admin API (/v1/admin): an admin credential, never a device's."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from coordinator.deps import Ctx, CurrentAdmin, Session
from coordinator.routes.blobs import blob_response
from coordinator.routes.bounded import BoundedJsonRoute
from coordinator.routes.deadline import upload_deadline
from coordinator.routes.params import PlainInt, RowId
from coordinator.routes.problems import ADMIN_ERRORS, problem_responses
from coordinator.schemas import (
    AuditOut,
    BlobGcReport,
    DeviceOut,
    ModelVersionOut,
    PrivacyOut,
    RoundConfig,
    RoundOut,
    TokenInfoOut,
    TokenOut,
    TokenRequest,
)
from coordinator.services import blob_gc
from coordinator.services import enrollment as enrollment_service
from coordinator.services import models as model_service
from coordinator.services import privacy as privacy_service
from coordinator.services import rounds as round_service
from coordinator.services.downloads import BlobRef
from fedface_common.text import PlainText
from fedface_common.wire import API_PREFIX
from storage.models import Device, EnrollmentToken, ModelVersion
from storage.repositories.audit import AuditRepository

router = APIRouter(prefix=f"{API_PREFIX}/admin", tags=["admin"], responses=ADMIN_ERRORS,
                   route_class=BoundedJsonRoute)
_BINARY_BODY = {"requestBody": {"required": True, "content": {"application/octet-stream": {
    "schema": {"type": "string", "format": "binary"}}}}}


def _version_out(v: ModelVersion, served_id: int | None) -> ModelVersionOut:
    return ModelVersionOut(
        id=v.id, parent_id=v.parent_id, round_id=v.round_id, sha256=v.blob_sha256, size_bytes=v.size_bytes,
        manifest=v.manifest, metrics=v.metrics, note=v.note, has_class_centres=v.class_centres_sha256 is not None,
        served=v.id == served_id, created_at=v.created_at, pruned_at=v.pruned_at,
    )


def _device_out(d: Device) -> DeviceOut:
    return DeviceOut(id=str(d.id), label=d.label, created_at=d.created_at, last_seen_at=d.last_seen_at,
                     revoked_at=d.revoked_at)


def _token_info(t: EnrollmentToken) -> TokenInfoOut:
    return TokenInfoOut(id=str(t.id), note=t.note, uses=t.uses, max_uses=t.max_uses, expires_at=t.expires_at,
                        created_at=t.created_at, revoked_at=t.revoked_at)


# Models ---------------------------------------------------------------------------
@router.post("/models", response_model=ModelVersionOut, status_code=201, openapi_extra=_BINARY_BODY,
             responses=problem_responses(408))
async def register_model(request: Request, admin: CurrentAdmin, session: Session, ctx: Ctx,
                         note: PlainText | None = Query(default=None, max_length=256),
                         serve: bool = Query(default=False, description="Serve it at once")) -> ModelVersionOut:
    async with upload_deadline(ctx):
        version = await model_service.register(session, ctx, admin.name, request.stream(),
                                               request.headers.get("content-length"), note, serve)
    _, served = await model_service.list_versions(session)
    return _version_out(version, served)


@router.get("/models", response_model=list[ModelVersionOut])
async def list_models(admin: CurrentAdmin, session: Session) -> list[ModelVersionOut]:
    versions, served = await model_service.list_versions(session)
    return [_version_out(v, served) for v in versions]


@router.get("/models/{version_id}", response_model=ModelVersionOut)
async def get_model(version_id: RowId, admin: CurrentAdmin, session: Session) -> ModelVersionOut:
    version = await model_service.get(session, version_id)
    _, served = await model_service.list_versions(session)
    return _version_out(version, served)


@router.get("/models/{version_id}/weights")
async def download_model(version_id: RowId, request: Request, admin: CurrentAdmin, session: Session,
                         ctx: Ctx) -> Response:
    version = await model_service.with_weights(session, version_id)
    return await blob_response(ctx, BlobRef(version.blob_sha256, f"model-v{version_id}.safetensors"),
                               request.headers.get("if-none-match"))


@router.put("/models/{version_id}/class-centres", response_model=ModelVersionOut, openapi_extra=_BINARY_BODY,
            responses=problem_responses(408))
async def attach_class_centres(version_id: RowId, request: Request, admin: CurrentAdmin, session: Session,
                               ctx: Ctx) -> ModelVersionOut:
    async with upload_deadline(ctx):
        version = await model_service.attach_class_centres(session, ctx, admin.name, version_id, request.stream(),
                                                           request.headers.get("content-length"))
    _, served = await model_service.list_versions(session)
    return _version_out(version, served)


@router.post("/models/{version_id}/promote", response_model=ModelVersionOut)
async def promote_model(version_id: RowId, admin: CurrentAdmin, session: Session) -> ModelVersionOut:
    version = await model_service.promote(session, admin.name, version_id)
    return _version_out(version, version.id)


@router.post("/models/rollback", response_model=ModelVersionOut)
async def rollback_model(admin: CurrentAdmin, session: Session) -> ModelVersionOut:
    version = await model_service.rollback(session, admin.name)
    return _version_out(version, version.id)


# Rounds ---------------------------------------------------------------------------
@router.post("/rounds", response_model=RoundOut, status_code=201)
async def start_round(config: RoundConfig, admin: CurrentAdmin, session: Session, ctx: Ctx) -> RoundOut:
    rnd = await round_service.start(session, ctx, admin.name, config)
    return await round_service.describe(session, ctx, rnd)


@router.get("/rounds", response_model=list[RoundOut])
async def list_rounds(admin: CurrentAdmin, session: Session, ctx: Ctx,
                      limit: Annotated[int, PlainInt, Query(ge=1, le=1000)] = 100) -> list[RoundOut]:
    return list(await round_service.list_rounds(session, ctx, limit))


@router.get("/rounds/{round_id}", response_model=RoundOut)
async def get_round(round_id: RowId, admin: CurrentAdmin, session: Session, ctx: Ctx) -> RoundOut:
    return await round_service.describe(session, ctx, await round_service.get(session, round_id))


@router.post("/rounds/{round_id}/stop", response_model=RoundOut)
async def stop_round(round_id: RowId, admin: CurrentAdmin, session: Session, ctx: Ctx) -> RoundOut:
    rnd = await round_service.stop(session, ctx, admin.name, round_id)
    ctx.wake_driver()
    return await round_service.describe(session, ctx, rnd)


@router.post("/rounds/{round_id}/cancel", response_model=RoundOut)
async def cancel_round(round_id: RowId, admin: CurrentAdmin, session: Session, ctx: Ctx) -> RoundOut:
    rnd = await round_service.cancel(session, ctx, admin.name, round_id)
    return await round_service.describe(session, ctx, rnd)


@router.get("/privacy", response_model=PrivacyOut)
async def privacy_ledger(admin: CurrentAdmin, session: Session, ctx: Ctx,
                         delta: float | None = Query(default=None, gt=0, lt=1,
                                                     description="Default: the latest DP round's delta")
                         ) -> PrivacyOut:
    return await privacy_service.ledger(session, delta, ctx.settings.dp_epsilon_budget)


# Enrollment and devices -----------------------------------------------------------
@router.post("/enrollment-tokens", response_model=TokenOut, status_code=201)
async def issue_token(body: TokenRequest, admin: CurrentAdmin, session: Session) -> TokenOut:
    row, token = await enrollment_service.issue_token(session, admin.name, body.max_uses, body.ttl_s, body.note)
    return TokenOut(id=str(row.id), token=token, max_uses=row.max_uses, expires_at=row.expires_at)


@router.get("/enrollment-tokens", response_model=list[TokenInfoOut])
async def list_tokens(admin: CurrentAdmin, session: Session,
                      limit: Annotated[int, PlainInt, Query(ge=1, le=1000)] = 100) -> list[TokenInfoOut]:
    """The newest tokens, without their secrets (a token is shown once, when issued)."""
    return [_token_info(t) for t in await enrollment_service.list_tokens(session, limit)]


@router.post("/enrollment-tokens/{token_id}/revoke", response_model=TokenInfoOut)
async def revoke_token(token_id: uuid.UUID, admin: CurrentAdmin, session: Session) -> TokenInfoOut:
    """No further device enrolls with it (idempotent); devices it enrolled keep their credentials."""
    return _token_info(await enrollment_service.revoke_token(session, admin.name, token_id))


@router.get("/devices", response_model=list[DeviceOut])
async def list_devices(admin: CurrentAdmin, session: Session,
                       include_revoked: bool = Query(default=True)) -> list[DeviceOut]:
    return [_device_out(d) for d in await enrollment_service.list_devices(session, include_revoked)]


@router.post("/devices/{device_id}/revoke", response_model=DeviceOut)
async def revoke_device(device_id: uuid.UUID, admin: CurrentAdmin, session: Session) -> DeviceOut:
    return _device_out(await enrollment_service.revoke_device(session, admin.name, device_id))


@router.get("/audit", response_model=list[AuditOut])
async def audit_log(admin: CurrentAdmin, session: Session,
                    limit: Annotated[int, PlainInt, Query(ge=1, le=5000)] = 200) -> list[AuditOut]:
    return [AuditOut(id=e.id, at=e.at, actor=e.actor, action=e.action, target=e.target, details=e.details)
            for e in await AuditRepository(session).list(limit)]


# Blob store -----------------------------------------------------------------------
@router.post("/blobs/gc", response_model=BlobGcReport)
async def collect_blobs(admin: CurrentAdmin, session: Session, ctx: Ctx,
                        dry_run: bool = Query(default=False, description="Report what would go; remove nothing")
                        ) -> BlobGcReport:
    return await blob_gc.collect_for_admin(session, ctx, admin.name, dry_run)
