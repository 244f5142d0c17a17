"""Secure aggregation over the device API, on Postgres and Redis over real HTTP: a secure round commits the
plain round's model within the fixed-point bound, devices dropping at any stage are handled as SecAgg+
says, resent or misaddressed messages change nothing, and algorithms that read single updates refuse it."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest

from fedface_common.secagg import fixedpoint
from fedface_common.secagg.device import SecAggDevice
from fedface_common.secagg.messages import (
    MASKED_INPUT_TENSOR,
    SHARE_CIPHERTEXT_BYTES,
    EncryptedShare,
    ShareKeys,
    UnmaskResponse,
)
from fedface_common.secagg.task import SECAGG_META_KEY, flatten
from fedface_common.tensors import decode, encode
from tests.support.fleet import ADMIN, delta, delta_bytes, enroll, get_round, register_model, start_round, tiny_model
from tests.support.live import wait_until
from tests.support.secure import SecureDevice, run_secure_round, secure_params, wait_stage

N = 5


def _updates(n: int) -> list[dict[str, np.ndarray]]:
    return [delta(i, embedding=False) for i in range(n)]


def _model(api: httpx.Client, version_id: int) -> dict[str, np.ndarray]:
    return decode(api.get(f"/v1/admin/models/{version_id}/weights", headers=ADMIN).content)


def _secure_round(api: httpx.Client, n: int = N, **secagg: Any) -> tuple[dict[str, Any], list[SecureDevice]]:
    devices = [SecureDevice(d, u) for d, u in zip(enroll(api, n), _updates(n), strict=True)]
    rnd = start_round(api, algorithm="fedavg-plain", target_devices=n, min_devices=3, deadline_s=30,
                      params=secure_params(**secagg))
    return rnd, devices


def test_a_secure_round_commits_the_plain_rounds_model_within_the_bound(api: httpx.Client) -> None:
    base = tiny_model()
    register_model(api, base)
    rnd, devices = _secure_round(api)
    done = run_secure_round(api, int(rnd["id"]), devices)
    assert done["state"] == "committed", done["failure_reason"]
    secure = _model(api, done["result_version_id"])
    metrics = done["metrics"]["secagg"]
    assert metrics["survivors"] == N and metrics["devices"] == N and metrics["weights"] == "unit"
    bound = metrics["error_bound_mean"]
    assert 0 < bound < 1e-5

    # The same updates in a plain round, unit weights, no clipping (their norms are below clip_norm = 10).
    again = register_model(api, base)  # served again, so the plain round starts from the same weights
    plain_devices = enroll(api, N)
    plain = start_round(api, algorithm="fedavg-plain", target_devices=N, min_devices=N,
                        params={"robust": {"norm_bound": "off", "sample_cap": "off"}})
    for i, d in enumerate(plain_devices):
        assert d.check_in()["status"] == "task"
        assert d.submit(plain["id"], delta_bytes(i, embedding=False), base_version=again["id"]).status_code == 200
    wait_until(lambda: get_round(api, plain["id"])["state"] == "committed", what="plain commit")
    reference = _model(api, get_round(api, plain["id"])["result_version_id"])
    expected = {k: base[k] + np.mean([u[k] for u in _updates(N)], axis=0) for k in ("layer.weight", "layer.bias")}
    for name, want in expected.items():
        # float32 storage of the model adds its own rounding to the fixed-point bound.
        np.testing.assert_allclose(secure[name], reference[name], rtol=0, atol=bound + 1e-6)
        np.testing.assert_allclose(secure[name], want, rtol=0, atol=bound + 1e-6)
    assert secure["bn.num_batches_tracked"] == base["bn.num_batches_tracked"]


@pytest.mark.parametrize("stage", ["advertise", "share_keys", "masked_input", "unmask"])
def test_a_device_that_drops_at_any_stage_is_left_out_or_unmasked(api: httpx.Client, stage: str) -> None:
    base = tiny_model()
    register_model(api, base)
    rnd, devices = _secure_round(api)
    done = run_secure_round(api, int(rnd["id"]), devices, silent={stage: {1}})
    assert done["state"] == "committed", done["failure_reason"]
    model = _model(api, done["result_version_id"])
    # Dropping before the masked input leaves the update out; dropping at unmasking leaves it in the sum.
    counted = [i for i in range(N) if stage == "unmask" or i != 1]
    assert done["metrics"]["secagg"]["survivors"] == len(counted)
    bound = done["metrics"]["secagg"]["error_bound_mean"]
    for name in ("layer.weight", "layer.bias"):
        want = base[name] + np.mean([_updates(N)[i][name] for i in counted], axis=0)
        np.testing.assert_allclose(model[name], want, rtol=0, atol=bound + 1e-6)


def test_too_few_survivors_fail_the_round_with_no_model_written(api: httpx.Client) -> None:
    register_model(api)
    rnd, devices = _secure_round(api)
    versions = len(api.get("/v1/admin/models", headers=ADMIN).json())
    done = run_secure_round(api, int(rnd["id"]), devices, silent={"masked_input": {0, 1, 2}})
    assert done["state"] == "failed" and done["result_version_id"] is None
    assert "secagg_not_enough_survivors" in done["failure_reason"] or "survived" in done["failure_reason"]
    assert len(api.get("/v1/admin/models", headers=ADMIN).json()) == versions


def test_resent_and_misaddressed_messages_are_refused_and_change_nothing(api: httpx.Client) -> None:
    register_model(api)
    rnd, devices = _secure_round(api)
    round_id = int(rnd["id"])
    for d in devices:
        d.task()
    wait_stage(api, devices[0], "advertise")
    for d in devices:
        assert d.act("advertise").status_code == 200  # type: ignore[union-attr]
    first = devices[0]
    assert first.state is not None
    # The same message again is an idempotent retry; a different one is refused.
    again = first.post(round_id, "advertise", first.state.advertise())
    assert again.status_code == 200 and again.json()["status"] == "replayed"
    other = devices[1].state
    assert other is not None
    refused = first.post(round_id, "advertise", other.advertise())
    assert refused.status_code == 409 and refused.json()["code"] == "secagg_duplicate_message"

    wait_stage(api, first, "share_keys")
    for d in devices:
        assert d.act("share_keys").status_code == 200  # type: ignore[union-attr]
    sent = first.sent["share_keys"]
    assert sent.status_code == 200
    assert first.state.sent_shares is not None
    shares = list(first.state.sent_shares.shares)
    # Shares addressed to another device than the stored ones: refused, 409 as a second message.
    forged = ShareKeys(shares=[EncryptedShare(recipient=s.recipient, ciphertext=bytes(len(s.ciphertext)))
                               for s in shares])
    r = first.post(round_id, "share_keys", forged)
    assert r.status_code == 409 and r.json()["code"] == "secagg_duplicate_message"

    wait_stage(api, first, "masked_input")
    # Another device's masked input, sent as its own: its metadata names the other device's masks.
    _, sa = devices[1].task()
    assert sa is not None and sa.forwarded is not None
    their_body = devices[1].masked_body(sa, sa.forwarded)
    theirs = first.device.submit(round_id, their_body, base_version=rnd["base_version_id"])
    assert theirs.status_code == 422 and theirs.json()["code"] == "secagg_invalid_message"
    assert get_round(api, round_id)["accepted"] == 0
    for d in devices:
        assert d.act("masked_input").status_code == 200  # type: ignore[union-attr]
    assert first.body is not None
    task = first.device.check_in()["task"]
    # The same upload again is answered as the first; another body is a duplicate submission.
    assert first.device.submit(round_id, first.body, base_version=task["model_version"]).status_code == 200
    other_body = devices[1].body
    assert other_body is not None
    dup = first.device.submit(round_id, other_body, base_version=task["model_version"])
    assert dup.status_code == 409 and dup.json()["code"] == "duplicate_submission"

    wait_stage(api, first, "unmask")
    for d in devices:
        assert d.act("unmask").status_code == 200  # type: ignore[union-attr]
    wait_until(lambda: get_round(api, round_id)["state"] == "committed", what="commit")
    assert get_round(api, round_id)["metrics"]["secagg"]["survivors"] == N


def test_a_share_for_a_stranger_or_a_message_out_of_turn_is_refused(api: httpx.Client) -> None:
    register_model(api)
    rnd, devices = _secure_round(api, neighbours=2, threshold=2)
    round_id = int(rnd["id"])
    for d in devices:
        d.task()
    wait_stage(api, devices[0], "advertise")
    for d in devices:
        d.act("advertise")
    wait_stage(api, devices[0], "share_keys")
    first = devices[0]
    assert first.state is not None
    strangers = [d.device.device_id for d in devices if d.device.device_id not in first.state.my_neighbours()
                 and d is not first]
    assert strangers
    bogus = ShareKeys(shares=[EncryptedShare(recipient=strangers[0], ciphertext=bytes(SHARE_CIPHERTEXT_BYTES))])
    r = first.post(round_id, "share_keys", bogus)
    assert r.status_code == 422 and r.json()["code"] == "secagg_invalid_message"
    early = first.post(round_id, "unmask", UnmaskResponse(shares=[]))
    assert early.status_code == 409 and early.json()["code"] == "secagg_wrong_stage"
    wrong = devices[1].post(round_id, "advertise", devices[1].state.advertise())  # type: ignore[union-attr]
    assert wrong.status_code == 200 and wrong.json()["status"] == "replayed"


@pytest.mark.parametrize("algorithm", ["fedface", "fedavg"])
def test_algorithms_that_read_single_updates_refuse_secure_aggregation(api: httpx.Client, algorithm: str) -> None:
    register_model(api)
    r = api.post("/v1/admin/rounds", headers=ADMIN, json={
        "algorithm": algorithm, "target_devices": 3, "min_devices": 2, "params": secure_params()})
    assert r.status_code == 422 and r.json()["code"] == "invalid_config"
    assert "secagg" in r.json()["detail"]


def test_a_secure_fedface_private_round_commits_the_mean(api: httpx.Client) -> None:
    base = tiny_model()
    version = register_model(api, base)
    centres = np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32)
    r = api.put(f"/v1/admin/models/{version['id']}/class-centres", content=encode({"class_centres": centres}),
                headers=ADMIN)
    assert r.status_code == 200, r.text
    devices = [SecureDevice(d, u) for d, u in zip(enroll(api, N), _updates(N), strict=True)]
    rnd = start_round(api, algorithm="fedface-private", target_devices=N, min_devices=3, deadline_s=30,
                      params=secure_params())
    task = devices[0].task()[0]
    assert "secagg" not in task["training"]["params"]  # the devices' settings come in the task's own block
    done = run_secure_round(api, int(rnd["id"]), devices, silent={"share_keys": {2}})
    assert done["state"] == "committed", done["failure_reason"]
    model = _model(api, done["result_version_id"])
    bound = done["metrics"]["secagg"]["error_bound_mean"]
    for name in ("layer.weight", "layer.bias"):
        want = base[name] + np.mean([u[name] for i, u in enumerate(_updates(N)) if i != 2], axis=0)
        np.testing.assert_allclose(model[name], want, rtol=0, atol=bound + 1e-6)


def test_secure_aggregation_with_central_dp_noises_the_unmasked_sum(api: httpx.Client) -> None:
    register_model(api)
    adaptive = api.post("/v1/admin/rounds", headers=ADMIN, json={
        "algorithm": "fedavg-plain", "target_devices": N, "min_devices": 3, "over_selection": 1.0,
        "params": {**secure_params(), "dp": {"noise_multiplier": 1.0}}})
    assert adaptive.status_code == 422 and adaptive.json()["code"] == "invalid_config"
    devices = [SecureDevice(d, u) for d, u in zip(enroll(api, N), _updates(N), strict=True)]
    rnd = start_round(api, algorithm="fedavg-plain", target_devices=N, min_devices=3, over_selection=1.0,
                      params={**secure_params(clip_norm=10.0), "dp": {"noise_multiplier": 1.0, "clip": 10.0}})
    done = run_secure_round(api, int(rnd["id"]), devices)
    assert done["state"] == "committed", done["failure_reason"]
    assert done["metrics"]["secagg"]["survivors"] == N
    assert done["metrics"]["dp"]["noise_stddev"] == pytest.approx(10.0)


def test_an_unclipped_input_that_pushes_the_mean_beyond_the_clip_fails_the_round(api: httpx.Client) -> None:
    register_model(api)
    versions = len(api.get("/v1/admin/models", headers=ADMIN).json())
    rnd, devices = _secure_round(api, clip_norm=1.0)
    # A dishonest device masks an update of norm 7 encoded as if the clip were 7 (the others clip to 1).
    cheat = devices[0]

    def unclipped(sa: Any, forwarded: Any) -> bytes:
        assert cheat.state is not None
        raw = flatten(cheat.update, sa.layout)
        x = fixedpoint.encode(raw * (7.0 / np.linalg.norm(raw)), 7.0, sa.params.scale)
        cheat.state, masked, meta = cheat.state.mask(x, forwarded)
        return encode({MASKED_INPUT_TENSOR: masked}, {SECAGG_META_KEY: meta.model_dump_json()})

    cheat.masked_body = unclipped  # type: ignore[method-assign]
    done = run_secure_round(api, int(rnd["id"]), devices)
    assert done["state"] == "failed" and "above clip_norm" in done["failure_reason"], done
    assert len(api.get("/v1/admin/models", headers=ADMIN).json()) == versions


def test_stage_messages_for_rounds_a_device_is_not_in_all_get_one_answer(api: httpx.Client) -> None:
    """A round that does not exist and a secure round the device was not selected for answer alike, so a
    device cannot learn which round ids exist or which of them are secure."""
    register_model(api)
    rnd, devices = _secure_round(api)
    for d in devices:
        d.task()
    wait_stage(api, devices[0], "advertise")
    _, sa = devices[0].task()
    assert sa is not None and sa.params is not None
    (outsider,) = enroll(api, 1)
    # A well-formed message (keys made for a selected device: the outsider has no place in the round's params).
    message = SecAggDevice.create(sa.params, devices[0].device.device_id).advertise()
    answers = []
    for round_id in (int(rnd["id"]), 4242):
        r = outsider.api.post(f"/v1/rounds/{round_id}/secagg/advertise", content=message.model_dump_json(),
                              headers={**outsider.auth, "Content-Type": "application/json"})
        answers.append((r.status_code, r.json()["code"]))
    assert answers == [(403, "not_selected")] * 2
