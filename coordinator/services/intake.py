"""Update intake: every check a device's submission must pass, in the order
that refuses cheaply first (state and headers before reading the body).

Success is answered only once the update is durable: the blob is fsynced and
renamed into place here, and the row commits at the request boundary before
the response is sent. A retry of the same bytes gets the same answer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import numpy as np
import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.context import AppContext, RoundUpdateSpec
from coordinator.errors import (
    DegenerateClassEmbedding,
    DuplicateSubmission,
    FedFaceError,
    InvalidMetadata,
    InvalidNumSamples,
    InvalidQuantization,
    NotSelected,
    RoundClosed,
    StaleBaseVersion,
)
from coordinator.metrics import SUBMISSIONS, UPDATE_BYTES
from coordinator.services import models as model_service
from coordinator.services.headers import strict_int
from coordinator.services.secagg import masked as secagg_masked
from coordinator.services.secagg.layout import masked_wire_spec, round_layout
from coordinator.services.secagg.state import is_secure
from coordinator.services.uploads import UpdateMeasure, measure_staged, receive, validate_staged_async
from coordinator.strategies import make_strategy
from coordinator.strategies.robust_params import MIN_CLASS_EMBEDDING_NORM
from fedface_common.text import control_character_in_tree
from fedface_common.update_codec import QuantizationError, check_tensor, wire_spec
from fedface_common.wire import (
    CLASS_EMBEDDING_TENSOR,
    HEADER_BASE_VERSION,
    HEADER_CLIENT_METRICS,
    HEADER_NUM_SAMPLES,
    RoundState,
    SubmitResponse,
)
from storage.db import utcnow
from storage.models import Device, Round, Update
from storage.repositories.rounds import RoundRepository, SubmissionView
from storage.repositories.updates import UpdateRepository


def parse_num_samples(headers: Mapping[str, str], limit: int) -> int:
    n = strict_int(headers.get(HEADER_NUM_SAMPLES))
    if n is None or n < 1 or n > limit:
        raise InvalidNumSamples(f"{HEADER_NUM_SAMPLES} must be an integer in [1, {limit}], in plain decimal digits")
    return n


def parse_client_metrics(headers: Mapping[str, str], limit: int) -> dict[str, Any]:
    raw = headers.get(HEADER_CLIENT_METRICS)
    if raw is None:
        return {}
    if len(raw) > limit:
        raise InvalidMetadata(f"{HEADER_CLIENT_METRICS} exceeds {limit} bytes")
    try:
        metrics = json.loads(raw)
    except json.JSONDecodeError:
        raise InvalidMetadata(f"{HEADER_CLIENT_METRICS} is not JSON") from None
    ok_value = (int, float, str, bool)
    if not isinstance(metrics, dict) or not all(
        isinstance(k, str) and len(k) <= 64 and isinstance(v, ok_value) for k, v in metrics.items()
    ):
        raise InvalidMetadata(f"{HEADER_CLIENT_METRICS} must be a flat JSON object of numbers and strings")
    found = control_character_in_tree(metrics)
    if found is not None:
        raise InvalidMetadata(f"{HEADER_CLIENT_METRICS} may not hold control characters ({found})")
    for value in metrics.values():
        if (isinstance(value, float) and value != value) or value in (float("inf"), float("-inf")):
            raise InvalidMetadata("client metrics must be finite")
    return metrics


def check_encoded(name: str, values: np.ndarray) -> None:
    """The int8 encoding's ranges: scales in bounds, no -128 (a float32 round's tensors pass as they are)."""
    try:
        check_tensor(name, values)
    except QuantizationError as exc:
        raise InvalidQuantization(str(exc)) from exc


def _answer(upd: Update) -> SubmitResponse:
    return SubmitResponse(update_id=upd.id, round_id=upd.round_id, sha256=upd.blob_sha256, status="accepted")


def _check_open(rnd: Round, headers: Mapping[str, str]) -> None:
    if rnd.state != RoundState.COLLECTING or rnd.stop_requested or utcnow() >= rnd.deadline_at:
        raise RoundClosed(f"round {rnd.id} is {rnd.state if rnd.state != 'collecting' else 'past its deadline'}")
    raw_base = headers.get(HEADER_BASE_VERSION)
    if raw_base is None:
        raise InvalidMetadata(f"{HEADER_BASE_VERSION} header is required")
    base = strict_int(raw_base)
    if base is None:
        raise InvalidMetadata(f"{HEADER_BASE_VERSION} must be a model version id in plain decimal digits")
    if base != rnd.base_version_id:
        raise StaleBaseVersion(f"round {rnd.id} trains from version {rnd.base_version_id}, not {base}")


async def _expected_spec(session: AsyncSession, ctx: AppContext, rnd: Round) -> RoundUpdateSpec:
    """The tensors an update of this round holds (F32) and its body must hold (in the round's encoding)."""
    spec = ctx.update_specs.get(rnd.id)
    if spec is None:
        version = await model_service.get(session, rnd.base_version_id)
        strategy = make_strategy(rnd.algorithm, rnd.config.get("params"))
        f32 = model_service.update_spec(strategy, version)
        encoding = strategy.update_encoding
        # A secure round's body is the masked vector, never the deltas themselves.
        wire = masked_wire_spec(round_layout(strategy, version)) if strategy.secure else wire_spec(f32, encoding)
        spec = RoundUpdateSpec(f32=f32, wire=wire, encoding=encoding)
        if len(ctx.update_specs) > 32:
            ctx.update_specs.clear()
        ctx.update_specs[rnd.id] = spec
    return spec


def _check_measure(measure: UpdateMeasure) -> None:
    norm = measure.class_embedding_norm
    if norm is not None and not norm >= MIN_CLASS_EMBEDDING_NORM:
        raise DegenerateClassEmbedding(
            f"{CLASS_EMBEDDING_TENSOR!r} has L2 norm {norm:.3g}, below {MIN_CLASS_EMBEDDING_NORM:g}")


async def submit(
    session: AsyncSession, ctx: AppContext, device: Device, round_id: int, headers: Mapping[str, str],
    body: AsyncIterator[bytes],
) -> SubmitResponse:
    structlog.contextvars.bind_contextvars(round_id=round_id)
    view = await RoundRepository(session).for_submission(round_id, device.id)
    if view is None:
        # The answer a round the device was not selected for gets: a device cannot tell which round ids exist.
        raise NotSelected(f"device was not selected for round {round_id}")
    rnd = view.round
    try:
        return await _submit(session, ctx, device, view, headers, body)
    except FedFaceError as exc:
        SUBMISSIONS.labels(outcome=exc.code).inc()
        if not isinstance(exc, NotSelected):
            await ctx.state.incr("round", rnd.id, "rejected")
        await ctx.state.count_refusal(rnd.id, exc.code)  # the console's failures by reason
        raise


async def _submit(
    session: AsyncSession, ctx: AppContext, device: Device, view: SubmissionView, headers: Mapping[str, str],
    body: AsyncIterator[bytes],
) -> SubmitResponse:
    settings = ctx.settings
    rnd = view.round
    if not view.assigned:
        raise NotSelected(f"device was not selected for round {rnd.id}")
    updates = UpdateRepository(session)
    # A replay is answered as the original was, even once the round has closed:
    # the device may simply have lost the first answer.
    previous = view.previous
    secure = is_secure(rnd)
    secure_state = None
    if previous is None:
        _check_open(rnd, headers)
        if secure:
            secure_state = await secagg_masked.expect_input(session, rnd.id, device.id)
    num_samples = parse_num_samples(headers, settings.max_num_samples)
    client_metrics = parse_client_metrics(headers, settings.max_metrics_bytes)

    writer = await receive(body, headers.get("content-length"), settings.max_update_bytes, ctx.blobs)
    try:
        if previous is not None:
            if previous.blob_sha256 == writer.sha256 and previous.num_samples == num_samples:
                SUBMISSIONS.labels(outcome="replayed").inc()
                return _answer(previous)
            raise DuplicateSubmission(f"update {previous.id} was already accepted for round {rnd.id}")
        spec = await _expected_spec(session, ctx, rnd)
        _, metadata = await validate_staged_async(writer, spec.wire, check_encoded)
        measure: UpdateMeasure | None = None
        if secure_state is not None:
            await asyncio.to_thread(secagg_masked.check_staged, writer, metadata, secure_state, device.id)
        else:
            measure = await asyncio.to_thread(measure_staged, writer, spec.encoding, spec.f32)
            _check_measure(measure)
        sha = await writer.commit()
    finally:
        await writer.abort()  # no-op after commit; removes the staged file otherwise

    # The insert re-checks the round under a shared row lock held until commit:
    # the driver closes a round under an exclusive lock, so an update is either
    # in before the close (and aggregated) or refused, never acknowledged and
    # then left out.
    update_id = await updates.add_if_collecting(dict(
        round_id=rnd.id, device_id=device.id, blob_sha256=sha, size_bytes=writer.size, num_samples=num_samples,
        base_version_id=rnd.base_version_id, client_metrics=client_metrics, replica_id=ctx.replica_id,
        created_at=utcnow(), delta_norm=measure.delta_norm if measure is not None else None,
    ))
    if update_id is None:
        if not await RoundRepository(session).is_open_locked(rnd.id):
            raise RoundClosed(f"round {rnd.id} closed while the update was uploading")
        # A concurrent retry of this device won the race; answer as that one did.
        winner = await updates.find(rnd.id, device.id)
        if winner is not None and winner.blob_sha256 == sha and winner.num_samples == num_samples:
            return _answer(winner)
        raise DuplicateSubmission(f"another update was already accepted for round {rnd.id}")
    if secure:
        await secagg_masked.still_collecting(session, rnd.id)
    SUBMISSIONS.labels(outcome="accepted").inc()
    UPDATE_BYTES.inc(writer.size)
    ctx.wake_driver()
    return SubmitResponse(update_id=update_id, round_id=rnd.id, sha256=sha, status="accepted")
