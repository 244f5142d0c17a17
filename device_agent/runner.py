"""The agent loop: enroll, check in, train, submit, sleep as told.

`Agent.run_round()` is one complete round for one device (check in; if there
is a task: model, class embedding, photos, local training, submission) and
returns a `RoundReport`. It never sleeps, so a simulator can hold many
agents in one process and drive them itself; `Agent.run()` is the device's
loop around it, sleeping through an injected sleeper.

Privacy: photos, crops and features stay in this process. What leaves it is
the update body (backbone deltas in the round's update encoding, plus w_c for
fedface/fedavg) and the scalar metrics header."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from device_agent import algorithms
from device_agent import secagg as secure
from device_agent.client import ApiError, DeviceClient, NetworkError, Unauthorized
from device_agent.photos.pipeline import FacePipeline, FolderReport
from device_agent.state import AgentState, Credential, Pending, sha256_hex
from fedface_common import tensors, update_codec
from fedface_common.face.checkpoint import decode_model
from fedface_common.face.manifest import ModelManifest
from fedface_common.face.preprocess import batch_to_tensor
from fedface_common.wire import CLASS_CENTRES_TENSOR, Task

log = logging.getLogger(__name__)

DEFAULT_RETRY_S = 30.0
MAX_OUTAGE_BACKOFF_S = 900.0

# Given the number of optimiser steps, a context yielding the per-step callback.
ProgressFactory = Callable[[int], AbstractContextManager[algorithms.StepCallback]]


class Outcome(StrEnum):
    SUBMITTED = "submitted"  # trained and accepted this round
    RESUBMITTED = "resubmitted"  # a journaled update from an earlier (killed) run was accepted
    WAIT = "wait"  # no task now; come back after retry_after_s
    DROPPED = "dropped"  # the deadline could not be met; nothing sent
    REJECTED = "rejected"  # the server refused the update (code in `code`)
    ALREADY_SUBMITTED = "already_submitted"  # this round's update was sent before; not retrained
    NO_PHOTOS = "no_photos"  # no usable face in the folder; nothing to train on


DONE = frozenset(set(Outcome) - {Outcome.WAIT})


class AgentError(Exception):
    """A condition the agent cannot get past by waiting (not enrolled, revoked, no photos)."""


class PhotoSource(Protocol):
    def load(self, manifest: ModelManifest | None = None) -> tuple[list[Image.Image], FolderReport]:
        """The owner's face crops for a model (its input size and alignment template), or for the
        source's own default when no model is known yet."""
        ...


class FolderPhotos:
    """A photo folder, processed once per crop template and kept in memory as aligned crops.

    The pipeline (MTCNN weights and all) may be shared by many sources."""

    def __init__(self, folder: str | Path, pipeline: FacePipeline) -> None:
        self.folder = Path(folder)
        self.pipeline = pipeline
        self._cached: dict[tuple[int, str], tuple[list[Image.Image], FolderReport]] = {}

    def load(self, manifest: ModelManifest | None = None) -> tuple[list[Image.Image], FolderReport]:
        pipeline = (self.pipeline if manifest is None
                    else self.pipeline.for_template(manifest.input_size, manifest.alignment))
        key = (pipeline.size, pipeline.alignment)
        if key not in self._cached:
            self._cached[key] = pipeline.process_folder(self.folder)
        return self._cached[key]


@dataclass
class RoundReport:
    status: Outcome
    message: str = ""
    round_id: int | None = None
    model_version: int | None = None
    algorithm: str | None = None
    retry_after_s: float | None = None
    update_id: int | None = None
    code: str | None = None
    photos: dict[str, int] = field(default_factory=dict)
    photo_entries: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    bytes_sent: int = 0
    bytes_received: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items()}
        out["status"] = self.status.value
        return out


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


class Agent:
    """One device. Everything with side effects (HTTP, disk, clocks, sleep) is injected."""

    def __init__(
        self,
        client: DeviceClient,
        state: AgentState,
        photos: PhotoSource,
        *,
        enroll_token: str | None = None,
        label: str | None = None,
        device: torch.device | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
        sleeper: Callable[[float], None] = time.sleep,
        progress: ProgressFactory | None = None,
        seed: int | None = None,
        deadline_safety: float = 1.25,
        deadline_margin_s: float = 2.0,
    ) -> None:
        self.client = client
        self.state = state
        self.photos = photos
        self.enroll_token = enroll_token
        self.label = label
        self.device = device or torch.device("cpu")
        self.now = now
        self.monotonic = monotonic
        self.sleeper = sleeper
        self.progress = progress
        self.seed = seed
        self.deadline_safety = deadline_safety
        self.deadline_margin_s = deadline_margin_s
        self.device_id: str | None = None
        self._inputs: dict[tuple[Any, ...], torch.Tensor] = {}

    # --- enrollment ------------------------------------------------------------------------
    def ensure_enrolled(self) -> str:
        """The device id: from the stored credential, or by enrolling once with the token."""
        if self.client.credential and self.device_id:
            return self.device_id
        cred = self.state.load_credential()
        if cred is None:
            if not self.enroll_token:
                raise AgentError(f"not enrolled with {self.client.base_url}: pass an enrollment token")
            resp = self.client.enroll(self.enroll_token, self.label)
            cred = Credential(resp.device_id, resp.credential, self.client.base_url)
            self.state.save_credential(cred)
            log.info("enrolled as device %s", resp.device_id)
        self.client.credential = cred.credential
        self.device_id = cred.device_id
        return cred.device_id

    # --- one round -------------------------------------------------------------------------
    def run_round(self) -> RoundReport:
        """One check-in and, if it brings a task, the whole round. Never sleeps."""
        self.ensure_enrolled()
        sent, received, start = self.client.bytes_sent, self.client.bytes_received, self.monotonic()
        try:
            report = self._resume_pending() or self._check_in_and_train()
        except Unauthorized as exc:
            raise AgentError(f"the server refused this device's credential ({exc.code}); enroll again") from exc
        except ApiError as exc:
            if exc.retryable:
                raise
            # E.g. the round closed while we downloaded (not_selected, forbidden): this
            # round is over for us; the next check-in tells us what to do.
            report = RoundReport(Outcome.REJECTED, f"round abandoned: {exc}", code=exc.code,
                                 retry_after_s=DEFAULT_RETRY_S)
        report.bytes_sent = self.client.bytes_sent - sent
        report.bytes_received = self.client.bytes_received - received
        report.seconds = round(self.monotonic() - start, 3)
        return report

    def _resume_pending(self) -> RoundReport | None:
        """Submit an update a killed run computed but did not get acknowledged; the server
        answers a retry of identical bytes with the original success, so this is idempotent."""
        found = self.state.pending()
        if found is None:
            return None
        pending, body = found
        log.info("resubmitting the journaled update for round %d", pending.round_id)
        report = RoundReport(Outcome.RESUBMITTED, round_id=pending.round_id, model_version=pending.base_version,
                             algorithm=pending.algorithm, metrics=dict(pending.metrics))
        try:
            resp = self.client.submit(pending.round_id, body, pending.num_samples, pending.base_version,
                                      pending.metrics)
        except Unauthorized:
            raise  # keep it: the credential problem is fatal, the update may still be wanted
        except ApiError as exc:
            if exc.retryable:
                raise  # keep it for the next attempt
            # round_closed, stale_base_version, ... or refused outright: resending cannot help.
            self.state.clear_pending()
            log.info("journaled update for round %d is no longer wanted (%s)", pending.round_id, exc.code)
            return None
        self.state.mark_submitted(pending.round_id, resp.update_id)
        report.update_id = resp.update_id
        report.message = f"resubmitted the update journaled by an earlier run (update {resp.update_id})"
        return report

    def _check_in_and_train(self) -> RoundReport:
        answer = self.client.check_in()
        if answer.status == "wait" or answer.task is None:
            retry = answer.retry_after_s if answer.retry_after_s is not None else DEFAULT_RETRY_S
            return RoundReport(Outcome.WAIT, f"no task; come back in {retry:.0f} s", retry_after_s=retry)
        task = answer.task
        report = RoundReport(Outcome.SUBMITTED, round_id=task.round_id, model_version=task.model_version,
                             algorithm=task.training.algorithm)
        crops, folder = self.photos.load()
        report.photos = folder.counts()
        report.photo_entries = [{"name": e.name, "used": e.used, "reason": e.reason.value if e.reason else None,
                                 "detail": e.detail} for e in folder.entries]
        if task.secagg is not None:  # one stage per check-in; training happens at the masked-input stage
            return secure.handle(self, task, lambda: self._train_and_submit(task, crops, report), report)
        if self.state.last_submitted_round() == task.round_id:
            report.status, report.retry_after_s = Outcome.ALREADY_SUBMITTED, DEFAULT_RETRY_S
            report.message = f"round {task.round_id} was already submitted; not training it again"
            return report
        if not crops:
            report.status = Outcome.NO_PHOTOS
            report.message = f"no usable face among {len(folder.entries)} files; nothing to train on"
            return report
        remaining = (_aware(task.deadline) - self.now()).total_seconds()
        # After dropping a round, come back once it is over: until then a check-in
        # would only hand out the same task again.
        after_round = max(DEFAULT_RETRY_S, remaining + 1.0)
        if task.training.algorithm not in algorithms.SUPPORTED_ALGORITHMS:
            report.status, report.code, report.retry_after_s = Outcome.DROPPED, "unsupported_algorithm", after_round
            report.message = f"this agent cannot train {task.training.algorithm!r}"
            return report
        try:  # before training: an update this agent cannot encode would be wasted work
            update_codec.encoding_of(task.training.params)
        except ValueError as exc:
            report.status, report.code, report.retry_after_s = Outcome.DROPPED, "unsupported_encoding", after_round
            report.message = f"this agent cannot send the round's update: {exc}"
            return report
        estimate = self.state.last_round_seconds()
        if estimate is not None and estimate * self.deadline_safety + self.deadline_margin_s > remaining:
            report.status, report.retry_after_s = Outcome.DROPPED, after_round
            report.message = (f"dropped: the last round took {estimate:.1f} s and only {remaining:.1f} s remain "
                              f"before the deadline")
            return report
        return self._train_and_submit(task, crops, report)

    def _train_and_submit(self, task: Task, crops: list[Image.Image], report: RoundReport) -> RoundReport:
        work_start = self.monotonic()
        model_bytes = self._blob(task.model_sha256, lambda etag: self.client.model_weights(task.model_version, etag))
        decoded = decode_model(model_bytes, str(self.device))
        base = tensors.decode(model_bytes)
        cfg = task.training
        private = cfg.algorithm == algorithms.PRIVATE_ALGORITHM
        w_c, centres = self._class_embedding(task, decoded.manifest, private)
        crops, _ = self.photos.load(decoded.manifest)  # the model's own crops (size, template)
        if not crops:
            report.status = Outcome.NO_PHOTOS
            report.message = f"no usable face for a {decoded.manifest.architecture} model; nothing to train on"
            return report
        x = self._input(crops, decoded.manifest)
        steps = cfg.local_epochs * -(-len(x) // cfg.batch_size)
        progress: AbstractContextManager[algorithms.StepCallback | None] = (
            self.progress(steps) if self.progress else nullcontext(None))
        with progress as on_step:
            result = algorithms.train_local(decoded.model, base, x, cfg, class_embedding=w_c, centres=centres,
                                            device=self.device, seed=self.seed, on_step=on_step)
        self.state.record_round_seconds(self.monotonic() - work_start)
        if private:
            # w_c never leaves the device in fedface-private: it lives only in the state dir.
            self.state.save_private_embedding(result.class_embedding)
        metrics = {**result.metrics, "photos_used": report.photos.get("used", 0),
                   "photos_skipped": sum(v for k, v in report.photos.items() if k != "used")}
        report.metrics = metrics
        if self.now() >= _aware(task.deadline):
            report.status, report.retry_after_s = Outcome.DROPPED, DEFAULT_RETRY_S
            report.message = "dropped: training finished after the round's deadline"
            return report
        if task.secagg is not None:
            return secure.upload_masked(self, task, result.update_tensors(cfg.algorithm), len(x), report)
        try:
            body = tensors.encode(update_codec.encode(result.update_tensors(cfg.algorithm),
                                                      update_codec.encoding_of(cfg.params)))
        except update_codec.UpdateEncodingError as exc:  # e.g. a diverged step beyond float16's range
            report.status, report.code, report.retry_after_s = Outcome.DROPPED, "update_not_encodable", DEFAULT_RETRY_S
            report.message = f"dropped: {exc}"
            return report
        pending = Pending(task.round_id, task.model_version, len(x), sha256_hex(body), cfg.algorithm, metrics)
        self.state.save_pending(pending, body)
        self._before_submit()
        try:
            resp = self.client.submit(task.round_id, body, len(x), task.model_version, metrics)
        except ApiError as exc:
            if exc.retryable:
                raise  # retries exhausted: keep the journal, resubmit on the next call
            self.state.clear_pending()
            report.status, report.code, report.retry_after_s = Outcome.REJECTED, exc.code, DEFAULT_RETRY_S
            report.message = f"the server refused the update: {exc}"
            return report
        self.state.mark_submitted(task.round_id, resp.update_id)
        self.state.prune_blobs({task.model_sha256, *task.extra_blobs.values()})
        report.update_id = resp.update_id
        report.message = f"update {resp.update_id} accepted for round {task.round_id}"
        return report

    def _before_submit(self) -> None:
        """Hook between journaling and sending (tests 'kill' the agent here)."""

    # --- inputs ----------------------------------------------------------------------------
    def _blob(self, sha256: str, fetch: Callable[[str | None], bytes | None]) -> bytes:
        """Content-addressed download: a verified cached copy is revalidated with
        If-None-Match (a 304 costs no body), anything new is hash-checked before use."""
        cached = self.state.cached_blob(sha256)
        data = fetch(sha256 if cached is not None else None)
        if data is None:
            if cached is None:
                raise ApiError(304, "unexpected_not_modified", "304 without a cached copy")
            return cached
        self.state.store_blob(sha256, data)
        return data

    def _class_embedding(self, task: Task, manifest: ModelManifest,
                         private: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
        dim = manifest.embedding_dim
        if not private:
            w = self.client.class_embedding(task.round_id) if task.has_class_embedding else None
            return (w if w is not None and w.shape == (dim,) else None), None
        sha = task.extra_blobs.get(CLASS_CENTRES_TENSOR)
        if sha is None:
            raise ApiError(409, "no_class_centres", "a fedface-private task without class centres")
        data = self._blob(sha, lambda etag: self.client.class_centres(task.round_id, etag))
        centres = tensors.decode(data)[CLASS_CENTRES_TENSOR].astype(np.float32)
        own = self.state.load_private_embedding()
        return (own if own is not None and own.shape == (dim,) else None), centres

    def _input(self, crops: list[Image.Image], manifest: ModelManifest) -> torch.Tensor:
        """The crops as the model's normalised input, converted once per preprocessing setting."""
        key = (manifest.input_size, manifest.alignment, manifest.mean, manifest.std, manifest.colour_order)
        if key not in self._inputs:
            self._inputs[key] = batch_to_tensor(crops, manifest)
        return self._inputs[key]

    # --- the loop --------------------------------------------------------------------------
    def _outage_delay(self, failures: int, exc: Exception) -> float:
        """How long to wait once the client's own retries gave up: doubling per failure in a row,
        with equal jitter so that a fleet spreads out, and never before the server's Retry-After."""
        cap = min(MAX_OUTAGE_BACKOFF_S, DEFAULT_RETRY_S * 2 ** min(failures - 1, 10))
        delay = self.client.rng.uniform(0.5 * cap, cap)
        retry_after = exc.retry_after_s if isinstance(exc, ApiError) else None
        return max(delay, min(retry_after, MAX_OUTAGE_BACKOFF_S)) if retry_after is not None else delay

    def run(self, *, once: bool = False, max_wait_s: float | None = None,
            on_report: Callable[[RoundReport], None] | None = None) -> list[RoundReport]:
        """Rounds until stopped. once: return after the first round with a task (whatever
        its outcome). max_wait_s: give up after this many seconds spent waiting for a task
        in a row (0: return at the first 'wait'). Returns the reports, newest last."""
        reports: list[RoundReport] = []
        waited = 0.0
        failures = 0
        self.photos.load()  # before the first check-in, so face detection never eats into a deadline
        while True:
            try:
                report = self.run_round()
                failures = 0
            except (NetworkError, ApiError) as exc:
                # The client already retried; a device outlives server outages by backing off further.
                if once:
                    raise
                failures += 1
                delay = self._outage_delay(failures, exc)
                log.warning("server unavailable (%s); trying again in %.0f s", exc, delay)
                self.sleeper(delay)
                continue
            reports.append(report)
            if on_report is not None:
                on_report(report)
            if report.status == Outcome.NO_PHOTOS or (once and report.status in DONE):
                return reports
            if report.status in DONE:
                waited = 0.0
            delay = report.retry_after_s if report.retry_after_s is not None else 0.0
            if report.status == Outcome.WAIT:
                if max_wait_s is not None and waited + delay > max_wait_s:
                    return reports
                waited += delay
            if delay > 0:
                self.sleeper(delay)


@contextmanager
def rich_progress(total_steps: int) -> Iterator[algorithms.StepCallback]:
    """A rich progress bar over local training steps (to stderr, so --json stays clean)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=False) as bar:
        task_id = bar.add_task("local training", total=total_steps)

        def step(epoch: int, batch: int, batches: int) -> None:
            bar.update(task_id, advance=1, description=f"epoch {epoch + 1} batch {batch + 1}/{batches}")

        yield step
