"""The device API (/v1). Every call but enrollment needs a device credential."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from coordinator.deps import Ctx, CurrentDevice, Session
from coordinator.routes.blobs import blob_response
from coordinator.routes.bounded import BoundedJsonRoute
from coordinator.routes.deadline import upload_deadline
from coordinator.routes.params import RowId
from coordinator.routes.problems import DEVICE_ERRORS, problem_responses
from coordinator.services import checkin as checkin_service
from coordinator.services import downloads, intake
from coordinator.services import enrollment as enrollment_service
from coordinator.services.secagg import stages as secagg_stages
from fedface_common.secagg.messages import AdvertiseKeys, ShareKeys, UnmaskResponse
from fedface_common.secagg.task import SecAggAck, Stage
from fedface_common.wire import API_PREFIX, CheckInResponse, EnrollRequest, EnrollResponse, SubmitResponse

router = APIRouter(prefix=API_PREFIX, tags=["device"], responses=DEVICE_ERRORS, route_class=BoundedJsonRoute)


@router.post("/enroll", response_model=EnrollResponse, status_code=201)
async def enroll(body: EnrollRequest, session: Session) -> EnrollResponse:
    device, credential = await enrollment_service.enroll(session, body.token, body.label)
    return EnrollResponse(device_id=str(device.id), credential=credential)


@router.post("/check-in", response_model=CheckInResponse)
async def check_in(device: CurrentDevice, session: Session, ctx: Ctx) -> CheckInResponse:
    return await checkin_service.check_in(session, ctx, device)


@router.get("/models/{version_id}/weights", responses={304: {"description": "Not modified"}})
async def model_weights(version_id: RowId, request: Request, device: CurrentDevice, session: Session,
                        ctx: Ctx) -> Response:
    blob = await downloads.model_for_device(session, device, version_id)
    return await blob_response(ctx, blob, request.headers.get("if-none-match"))


@router.get("/rounds/{round_id}/class-embedding")
async def class_embedding(round_id: RowId, device: CurrentDevice, session: Session) -> Response:
    data = await downloads.class_embedding_for_device(session, device, round_id)
    return Response(content=data, media_type="application/octet-stream")


@router.get("/rounds/{round_id}/class-centres", responses={304: {"description": "Not modified"}})
async def class_centres(round_id: RowId, request: Request, device: CurrentDevice, session: Session,
                        ctx: Ctx) -> Response:
    blob = await downloads.class_centres_for_device(session, device, round_id)
    return await blob_response(ctx, blob, request.headers.get("if-none-match"))


@router.post("/rounds/{round_id}/update", response_model=SubmitResponse, responses=problem_responses(408),
             openapi_extra={"requestBody": {"required": True, "content": {"application/octet-stream": {
                 "schema": {"type": "string", "format": "binary"}}}}})
async def submit_update(round_id: RowId, request: Request, device: CurrentDevice, session: Session,
                        ctx: Ctx) -> SubmitResponse:
    async with upload_deadline(ctx):
        return await intake.submit(session, ctx, device, round_id, request.headers, request.stream())


# Secure aggregation's stage messages (the masked input is the update upload above).
@router.post("/rounds/{round_id}/secagg/advertise", response_model=SecAggAck)
async def secagg_advertise(round_id: RowId, body: AdvertiseKeys, device: CurrentDevice, session: Session,
                           ctx: Ctx) -> SecAggAck:
    return await secagg_stages.post(session, ctx, device.id, round_id, Stage.ADVERTISE, body)


@router.post("/rounds/{round_id}/secagg/share_keys", response_model=SecAggAck)
async def secagg_share_keys(round_id: RowId, body: ShareKeys, device: CurrentDevice, session: Session,
                            ctx: Ctx) -> SecAggAck:
    return await secagg_stages.post(session, ctx, device.id, round_id, Stage.SHARE_KEYS, body)


@router.post("/rounds/{round_id}/secagg/unmask", response_model=SecAggAck)
async def secagg_unmask(round_id: RowId, body: UnmaskResponse, device: CurrentDevice, session: Session,
                        ctx: Ctx) -> SecAggAck:
    return await secagg_stages.post(session, ctx, device.id, round_id, Stage.UNMASK, body)
