"""The agent's side of a secure round: one check-in, one stage.

Each check-in of a secure round names a stage (fedface_common/secagg/task.py). The device answers it from
its SecAggDevice state, which is written to disk before the message leaves (SecAggJournal), so that a
killed agent repeats the same message instead of producing a different one. At the masked-input stage the
agent trains as in any round, flattens its update in the order the task names, clips each group of it (the
deltas; a statistics round's moments apart), adds its share of the round's DP noise when the round has
distributed DP (`params.noise_stddev`), weighs it by its photo count when the round is weighted
(`params.max_weight`), encodes it to fixed point with the task's scales, masks it and uploads it as the
round's update (journaled like any update, so a lost answer is resent byte for byte, with the noise drawn
once).

What leaves the device in a secure round (no sample count in the clear, no training metrics, no class
embedding): two public keys, shares of its own secrets encrypted to its neighbours, the masked vector
(uniformly random to anyone without the other devices' secrets) and the shares it holds of its neighbours'
secrets, one kind per neighbour."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np

from device_agent.client import ApiError
from device_agent.state import Pending, SecAggJournal, sha256_hex
from fedface_common import tensors
from fedface_common.secagg.device import DeviceRefusal, SecAggDevice, encode_input
from fedface_common.secagg.messages import MASKED_INPUT_TENSOR
from fedface_common.secagg.task import SECAGG_META_KEY, SecAggTask, Stage
from fedface_common.wire import Task

if TYPE_CHECKING:
    from device_agent.runner import Agent, RoundReport

log = logging.getLogger(__name__)


def _secure(task: Task) -> SecAggTask:
    assert task.secagg is not None
    return task.secagg


def handle(agent: Agent, task: Task, train: Callable[[], RoundReport], report: RoundReport) -> RoundReport:
    """Answer the stage the check-in named. `train` runs the round's local training and calls
    `upload_masked` with the update (the runner's own training path)."""
    from device_agent.runner import Outcome

    sa = _secure(task)
    journal = SecAggJournal(agent.state.root)
    report.status, report.retry_after_s = Outcome.WAIT, sa.retry_after_s
    report.message = f"secure round {task.round_id}: stage {sa.stage}"
    if sa.params is None or sa.answered or sa.stage in (Stage.SELECT, Stage.DONE):
        return report  # selection still running, already answered, or not expected at this stage
    assert agent.device_id is not None
    stored = journal.load(task.round_id)
    state = SecAggDevice.from_json(stored) if stored is not None else None
    try:
        if sa.stage == Stage.ADVERTISE:
            if state is None:
                state = SecAggDevice.create(sa.params, agent.device_id)
                journal.save(task.round_id, state.to_json())
            agent.client.secagg_post(task.round_id, sa.stage, state.advertise())
        elif state is None:
            # Keys lost (a new state dir mid-round): this device cannot take part any more.
            report.status, report.code = Outcome.DROPPED, "secagg_state_lost"
            report.message = f"secure round {task.round_id}: no keys of this round on this device; left out"
        elif sa.stage == Stage.SHARE_KEYS and sa.neighbour_keys is not None:
            state, message = state.share_keys(sa.neighbour_keys)
            journal.save(task.round_id, state.to_json())
            agent.client.secagg_post(task.round_id, sa.stage, message)
        elif sa.stage == Stage.MASKED_INPUT and sa.forwarded is not None:
            if agent.state.last_submitted_round() != task.round_id:
                return train()
        elif sa.stage == Stage.UNMASK and sa.unmask_request is not None:
            state, response = state.unmask(sa.unmask_request)
            journal.save(task.round_id, state.to_json())
            agent.client.secagg_post(task.round_id, sa.stage, response)
            report.status = Outcome.SUBMITTED  # retry_after_s stays: the stage is open until all have answered
            report.message = f"secure round {task.round_id}: unmasking shares sent"
    except DeviceRefusal as exc:
        # The protocol's guarantees forbid the step (too few neighbours, a request for both shares).
        report.status, report.code = Outcome.DROPPED, "secagg_refused"
        report.message = f"secure round {task.round_id}: refused the {sa.stage} stage: {exc}"
    except ApiError as exc:
        if exc.retryable:
            raise
        # E.g. the stage closed meanwhile (secagg_wrong_stage): the next check-in says what is next.
        report.code, report.message = exc.code, f"secure round {task.round_id}: {exc}"
    return report


def upload_masked(agent: Agent, task: Task, update: Mapping[str, np.ndarray], num_samples: int,
                  report: RoundReport) -> RoundReport:
    """Flatten, clip, noise (distributed DP), weigh by `num_samples` (weighted rounds), encode, mask, journal,
    upload. The count only sets the device's weight inside the masked vector; it is never sent."""
    from device_agent.runner import Outcome

    sa = _secure(task)
    assert sa.params is not None and sa.forwarded is not None
    journal = SecAggJournal(agent.state.root)
    stored = journal.load(task.round_id)
    if stored is None:
        report.status, report.code = Outcome.DROPPED, "secagg_state_lost"
        return report
    x = encode_input(sa.params, sa.layout, update, num_samples)
    try:
        state, masked, meta = SecAggDevice.from_json(stored).mask(x, sa.forwarded)
    except DeviceRefusal as exc:
        report.status, report.code = Outcome.DROPPED, "secagg_refused"
        report.message = f"secure round {task.round_id}: refused to mask: {exc}"
        return report
    journal.save(task.round_id, state.to_json())
    body = tensors.encode({MASKED_INPUT_TENSOR: masked}, {SECAGG_META_KEY: meta.model_dump_json()})
    # The sample count (inside the masked vector as a weight, if the round weighs) and the training metrics are
    # data about the device that the sum does not need in the clear, so neither leaves it (the count header is
    # required: it says 1).
    pending = Pending(task.round_id, task.model_version, 1, sha256_hex(body), task.training.algorithm, {})
    agent.state.save_pending(pending, body)
    resp = agent.client.submit(task.round_id, body, 1, task.model_version, {})
    agent.state.mark_submitted(task.round_id, resp.update_id)
    report.status, report.retry_after_s, report.update_id = Outcome.WAIT, sa.retry_after_s, resp.update_id
    report.message = f"secure round {task.round_id}: masked update {resp.update_id} accepted; unmasking follows"
    return report
