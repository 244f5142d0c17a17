"""A whole round over real HTTP: enroll, check in, download, submit, aggregate."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
from sqlalchemy import create_engine, text

from fedface_common.tensors import decode, encode, metadata_of
from fedface_common.wire import (
    CLASS_EMBEDDING_TENSOR,
    HEAD_MEAN,
    HEAD_SECOND_MOMENT,
    HEAD_WITHIN_SCATTER,
    HEADER_BASE_VERSION,
    HEADER_NUM_SAMPLES,
    MANIFEST_METADATA_KEY,
)
from tests.support.fleet import (
    ADMIN,
    EMBEDDING_DIM,
    delta,
    delta_bytes,
    enroll,
    get_round,
    register_model,
    start_round,
    tiny_model,
)
from tests.support.live import wait_until


def test_round_commits_weighted_mean_of_concurrent_devices(api: httpx.Client) -> None:
    base = tiny_model()
    v1 = register_model(api, base)
    devices = enroll(api, 4)
    rnd = start_round(api, target_devices=4, min_devices=4)
    tasks = [d.check_in() for d in devices]
    assert all(t["status"] == "task" and t["task"]["round_id"] == rnd["id"] for t in tasks)
    assert tasks[0]["task"]["model_version"] == v1["id"]

    samples = [1, 2, 3, 10]

    def run(i: int) -> httpx.Response:
        return devices[i].submit(rnd["id"], delta_bytes(i), num_samples=samples[i], base_version=v1["id"])

    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(run, range(4)))
    assert [r.status_code for r in responses] == [200] * 4, [r.text for r in responses]

    wait_until(lambda: get_round(api, rnd["id"])["state"] == "committed", what="round commit")
    done = get_round(api, rnd["id"])
    assert (done["selected"], done["accepted"], done["rejected"]) == (4, 4, 0)
    new_id = done["result_version_id"]

    weights = np.array(samples, dtype=np.float64) / sum(samples)
    r = api.get(f"/v1/admin/models/{new_id}/weights", headers=ADMIN)
    got = decode(r.content)
    for name in ("layer.weight", "layer.bias"):
        expected = base[name] + sum(w * delta(i)[name] for i, w in enumerate(weights))
        np.testing.assert_allclose(got[name], expected, rtol=1e-5, atol=1e-6)
    # Integer buffers pass through untouched.
    assert got["bn.num_batches_tracked"] == base["bn.num_batches_tracked"]

    versions = api.get("/v1/admin/models", headers=ADMIN).json()
    newest = next(v for v in versions if v["id"] == new_id)
    assert newest["parent_id"] == v1["id"] and newest["round_id"] == rnd["id"] and newest["served"]
    assert newest["metrics"]["updates"] == 4
    assert 0 <= newest["metrics"]["aggregate_s"] < 30


def test_a_child_version_drops_its_parents_verification_thresholds(api: httpx.Client) -> None:
    v1 = register_model(api, extra_manifest={"thresholds": {"0.001": 0.93}, "notes": {"source": "test"}})
    (device,) = enroll(api, 1)
    rnd = start_round(api, target_devices=1, min_devices=1)
    assert device.check_in()["status"] == "task"
    assert device.submit(rnd["id"], delta_bytes(0), num_samples=1, base_version=v1["id"]).status_code == 200
    wait_until(lambda: get_round(api, rnd["id"])["state"] == "committed", what="round commit")
    child = get_round(api, rnd["id"])["result_version_id"]
    manifest = json.loads(metadata_of(api.get(f"/v1/admin/models/{child}/weights", headers=ADMIN).content)
                          [MANIFEST_METADATA_KEY])
    # Measured on the parent's embeddings: a trained model is calibrated anew; the rest is kept.
    assert "thresholds" not in manifest and manifest["notes"] == {"source": "test"}


def test_each_device_downloads_only_its_task_and_its_own_embedding(api: httpx.Client) -> None:
    v1 = register_model(api)
    a, b, outsider = enroll(api, 3)
    rnd = start_round(api, target_devices=2, min_devices=1, over_selection=1.0)
    assert a.check_in()["status"] == "task"
    assert b.check_in()["status"] == "task"
    assert outsider.check_in()["status"] == "wait"

    r = api.get(f"/v1/models/{v1['id']}/weights", headers=a.auth)
    assert r.status_code == 200 and r.headers["etag"] == f'"{v1["sha256"]}"'
    assert decode(r.content)["layer.bias"].shape == (3,)
    cached = api.get(f"/v1/models/{v1['id']}/weights", headers={**a.auth, "If-None-Match": r.headers["etag"]})
    assert cached.status_code == 304 and cached.content == b""

    refused = api.get(f"/v1/models/{v1['id']}/weights", headers=outsider.auth)
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
    # A version that does not exist is refused as one outside the task is: ids cannot be probed.
    missing = api.get("/v1/models/999/weights", headers=a.auth)
    assert missing.status_code == 403 and missing.json()["code"] == "forbidden"

    # No class embedding yet; after the round, each device gets its own row and only that.
    assert api.get(f"/v1/rounds/{rnd['id']}/class-embedding", headers=a.auth).status_code == 404
    assert a.submit(rnd["id"], delta_bytes(1), base_version=v1["id"]).status_code == 200
    assert b.submit(rnd["id"], delta_bytes(2), base_version=v1["id"]).status_code == 200
    wait_until(lambda: get_round(api, rnd["id"])["state"] == "committed", what="round commit")

    rnd2 = start_round(api, target_devices=2, min_devices=1)
    assert a.check_in()["task"]["has_class_embedding"] is True
    mine = decode(api.get(f"/v1/rounds/{rnd2['id']}/class-embedding", headers=a.auth).content)
    sent = delta(1)[CLASS_EMBEDDING_TENSOR]
    np.testing.assert_allclose(mine[CLASS_EMBEDDING_TENSOR], sent / np.linalg.norm(sent), rtol=1e-5)
    assert api.get(f"/v1/rounds/{rnd2['id']}/class-embedding", headers=outsider.auth).status_code == 403


def test_retry_gets_same_answer_and_a_different_second_update_is_refused(api: httpx.Client) -> None:
    v1 = register_model(api)
    (dev,) = enroll(api, 1)
    rnd = start_round(api, target_devices=2, min_devices=1)
    dev.check_in()
    first = dev.submit(rnd["id"], delta_bytes(5), num_samples=3, base_version=v1["id"])
    again = dev.submit(rnd["id"], delta_bytes(5), num_samples=3, base_version=v1["id"])
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    other = dev.submit(rnd["id"], delta_bytes(6), num_samples=3, base_version=v1["id"])
    assert other.status_code == 409 and other.json()["code"] == "duplicate_submission"
    assert get_round(api, rnd["id"])["accepted"] == 1
    # A device that lost the answer may retry after the round has closed: same answer again.
    assert api.post(f"/v1/admin/rounds/{rnd['id']}/stop", headers=ADMIN).status_code == 200
    wait_until(lambda: get_round(api, rnd["id"])["state"] == "committed", what="commit after stop")
    late_retry = dev.submit(rnd["id"], delta_bytes(5), num_samples=3, base_version=v1["id"])
    assert late_retry.status_code == 200 and late_retry.json() == first.json()
    late_other = dev.submit(rnd["id"], delta_bytes(7), num_samples=3, base_version=v1["id"])
    assert late_other.status_code == 409 and late_other.json()["code"] == "duplicate_submission"


def test_an_update_still_uploading_when_the_round_closes_is_refused_not_lost(api: httpx.Client) -> None:
    """The round closes between an upload's first and last byte: the late update
    gets round_closed, and the committed model holds exactly the earlier one."""
    base = tiny_model()
    v1 = register_model(api, base)
    a, b = enroll(api, 2)
    rnd = start_round(api, target_devices=5, min_devices=1)
    a.check_in()
    b.check_in()
    assert a.submit(rnd["id"], delta_bytes(1), num_samples=2, base_version=v1["id"]).status_code == 200

    body = delta_bytes(2)
    half_sent, go_on = threading.Event(), threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield body[: len(body) // 2]
        half_sent.set()
        go_on.wait(timeout=60)
        yield body[len(body) // 2 :]

    headers = {**b.auth, HEADER_NUM_SAMPLES: "3", HEADER_BASE_VERSION: str(v1["id"])}
    with ThreadPoolExecutor(1) as pool:
        late = pool.submit(api.post, f"/v1/rounds/{rnd['id']}/update", content=slow_body(), headers=headers)
        assert half_sent.wait(timeout=60)
        assert api.post(f"/v1/admin/rounds/{rnd['id']}/stop", headers=ADMIN).status_code == 200
        wait_until(lambda: get_round(api, rnd["id"])["state"] == "committed", what="commit after stop")
        go_on.set()
        response = late.result(timeout=60)
    assert response.status_code == 409 and response.json()["code"] == "round_closed"
    done = get_round(api, rnd["id"])
    assert done["accepted"] == 1
    got = decode(api.get(f"/v1/admin/models/{done['result_version_id']}/weights", headers=ADMIN).content)
    np.testing.assert_allclose(got["layer.weight"], base["layer.weight"] + delta(1)["layer.weight"], rtol=1e-6)


def test_round_without_quorum_fails_and_served_model_stays(api: httpx.Client, database_url: str) -> None:
    v1 = register_model(api)
    a, b = enroll(api, 2)
    rnd = start_round(api, target_devices=5, min_devices=2, deadline_s=600)
    a.check_in()
    b.check_in()
    assert a.submit(rnd["id"], delta_bytes(1), base_version=v1["id"]).status_code == 200
    # Let the deadline pass now, rather than racing a short one on a loaded machine.
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.execute(text("UPDATE rounds SET deadline_at = now() - interval '1 second' WHERE id = :id"),
                     {"id": rnd["id"]})
    engine.dispose()
    wait_until(lambda: get_round(api, rnd["id"])["state"] == "failed", what="round failure")
    failed = get_round(api, rnd["id"])
    assert "quorum" in failed["failure_reason"] and failed["result_version_id"] is None
    late = b.submit(rnd["id"], delta_bytes(2), base_version=v1["id"])
    assert late.status_code == 409 and late.json()["code"] == "round_closed"
    served = [v for v in api.get("/v1/admin/models", headers=ADMIN).json() if v["served"]]
    assert [v["id"] for v in served] == [v1["id"]]


def test_stop_aggregates_when_quorum_met_and_cancel_discards(api: httpx.Client) -> None:
    v1 = register_model(api)
    a, b = enroll(api, 2)
    rnd = start_round(api, target_devices=5, min_devices=1)
    a.check_in()
    assert a.submit(rnd["id"], delta_bytes(1), base_version=v1["id"]).status_code == 200
    assert api.post(f"/v1/admin/rounds/{rnd['id']}/stop", headers=ADMIN).status_code == 200
    wait_until(lambda: get_round(api, rnd["id"])["state"] == "committed", what="commit after stop")

    rnd2 = start_round(api, target_devices=5, min_devices=1)
    b.check_in()
    r = api.post(f"/v1/admin/rounds/{rnd2['id']}/cancel", headers=ADMIN)
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    late = b.submit(rnd2["id"], delta_bytes(2), base_version=rnd2["base_version_id"])
    assert late.json()["code"] == "round_closed"
    again = api.post(f"/v1/admin/rounds/{rnd2['id']}/cancel", headers=ADMIN)
    assert again.status_code == 409 and again.json()["code"] == "invalid_round_state"


def test_continuous_rounds_chain_from_each_new_version(api: httpx.Client) -> None:
    register_model(api)
    (dev,) = enroll(api, 1)
    first = start_round(api, target_devices=1, min_devices=1, continuous_rounds=2)
    seen_versions = []
    for i in range(3):
        task = None

        def got_task() -> bool:
            nonlocal task
            resp = dev.check_in()
            task = resp.get("task")
            return resp["status"] == "task"

        wait_until(got_task, what=f"task for round {i}")
        assert task is not None
        seen_versions.append(task["model_version"])
        r = dev.submit(task["round_id"], delta_bytes(i), base_version=task["model_version"])
        assert r.status_code == 200, r.text
    rounds = api.get("/v1/admin/rounds", headers=ADMIN).json()
    wait_until(lambda: all(r["state"] == "committed" for r in api.get("/v1/admin/rounds", headers=ADMIN).json()),
               what="all rounds committed")
    assert len(rounds) == 3 and rounds[-1]["id"] == first["id"]
    assert seen_versions == sorted(seen_versions) and len(set(seen_versions)) == 3


def test_only_one_active_round_and_promote_rollback(api: httpx.Client) -> None:
    v1 = register_model(api)
    v2 = register_model(api, tiny_model(seed=1), serve=False)
    assert v2["served"] is False
    r = api.post(f"/v1/admin/models/{v2['id']}/promote", headers=ADMIN)
    assert r.status_code == 200 and r.json()["served"]
    rnd = start_round(api)
    assert rnd["base_version_id"] == v2["id"]
    again = api.post("/v1/admin/rounds", json={"algorithm": "fedavg"}, headers=ADMIN)
    assert again.status_code == 409 and again.json()["code"] == "round_active"
    assert api.post(f"/v1/admin/rounds/{rnd['id']}/cancel", headers=ADMIN).status_code == 200
    # v2 has no parent: rollback is refused and nothing changes.
    rb = api.post("/v1/admin/models/rollback", headers=ADMIN)
    assert rb.status_code == 409 and rb.json()["code"] == "invalid_round_state", rb.text
    served = [v["id"] for v in api.get("/v1/admin/models", headers=ADMIN).json() if v["served"]]
    assert served == [v2["id"]] and v1["id"] != v2["id"]
    audit = [e["action"] for e in api.get("/v1/admin/audit", headers=ADMIN).json()]
    assert {"model.register", "model.promote", "round.start"} <= set(audit)


def test_an_aggregate_that_overflows_fails_the_round_and_keeps_the_served_model(api: httpx.Client) -> None:
    base = {k: np.full_like(v, 3e38) if v.dtype == np.float32 else v for k, v in tiny_model().items()}
    v1 = register_model(api, base)
    (dev,) = enroll(api, 1)
    rnd = start_round(api, target_devices=1, min_devices=1)
    dev.check_in()
    big = {k: np.full_like(v, 3e38) for k, v in delta(0).items()}  # finite, but base + delta is not
    assert dev.submit(rnd["id"], encode(big), base_version=v1["id"]).status_code == 200
    wait_until(lambda: get_round(api, rnd["id"])["state"] == "failed", what="overflowing round fails")
    assert "NaN or Inf" in get_round(api, rnd["id"])["failure_reason"]
    assert [v["id"] for v in api.get("/v1/admin/models", headers=ADMIN).json() if v["served"]] == [v1["id"]]


def _embedding_model(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The tensors a discriminant round rewrites, with the embedding width of the fleet helpers."""
    d = EMBEDDING_DIM
    return {"project.weight": rng.standard_normal((d, 6, 1, 1)).astype(np.float32),
            "bn_embedding.running_mean": np.zeros(d, np.float32), "bn_embedding.running_var": np.ones(d, np.float32),
            "bn_embedding.weight": np.ones(d, np.float32), "bn_embedding.bias": np.zeros(d, np.float32)}


def _lda_update(rng: np.random.Generator, base: dict[str, np.ndarray]) -> bytes:
    """What a device sends in a discriminant round: zero weight deltas, its head moments, its w_c."""
    h = rng.standard_normal((5, 6)) + rng.standard_normal(6)
    own = h - h.mean(0)
    return encode({**{k: np.zeros_like(v) for k, v in base.items()},
                   HEAD_MEAN: h.mean(0).astype(np.float32), HEAD_SECOND_MOMENT: (h.T @ h / 5).astype(np.float32),
                   HEAD_WITHIN_SCATTER: (own.T @ own / 5).astype(np.float32),
                   CLASS_EMBEDDING_TENSOR: rng.standard_normal(EMBEDDING_DIM).astype(np.float32)})


def test_a_discriminant_round_folds_the_transform_and_drops_the_old_class_embeddings(api: httpx.Client) -> None:
    """W rows measured in the old embedding space mean nothing after the transform: they are dropped,
    and each device starts its row again at its next round."""
    rng = np.random.default_rng(5)
    base = _embedding_model(rng)
    v1 = register_model(api, base)
    devices = enroll(api, 3)
    rnd = start_round(api, target_devices=3, min_devices=3)
    for i, device in enumerate(devices):
        assert device.check_in()["status"] == "task"
        body = encode({**{k: np.zeros_like(v) for k, v in base.items()},
                       CLASS_EMBEDDING_TENSOR: rng.standard_normal(EMBEDDING_DIM).astype(np.float32)})
        assert device.submit(rnd["id"], body, base_version=v1["id"]).status_code == 200, i
    wait_until(lambda: get_round(api, rnd["id"])["state"] == "committed", what="round commit")
    v2 = get_round(api, rnd["id"])["result_version_id"]

    lda = start_round(api, algorithm="fedface", target_devices=3, min_devices=3,
                      params={"embedding_lda_dims": 2})
    assert devices[0].check_in()["task"]["has_class_embedding"] is True
    # An update without the moments is refused (the round's spec asks for them).
    plain = encode({**{k: np.zeros_like(v) for k, v in base.items()},
                    CLASS_EMBEDDING_TENSOR: np.ones(EMBEDDING_DIM, np.float32)})
    refused = devices[0].submit(lda["id"], plain, base_version=v2)
    assert refused.status_code == 422, refused.text
    for device in devices[1:]:
        device.check_in()
    for device in devices:
        assert device.submit(lda["id"], _lda_update(rng, base), num_samples=5, base_version=v2).status_code == 200
    wait_until(lambda: get_round(api, lda["id"])["state"] == "committed", what="round commit")
    done = get_round(api, lda["id"])
    assert done["metrics"]["class_embeddings_dropped"] == 3
    versions = api.get("/v1/admin/models", headers=ADMIN).json()
    assert next(v for v in versions if v["id"] == done["result_version_id"])["metrics"]["class_embeddings_dropped"] == 3
    got = decode(api.get(f"/v1/admin/models/{done['result_version_id']}/weights", headers=ADMIN).content)
    assert (got["project.weight"][2:] == 0).all() and (got["project.weight"][:2] != 0).any()
    np.testing.assert_array_equal(got["bn_embedding.running_var"], np.ones(EMBEDDING_DIM, np.float32))

    start_round(api, target_devices=3, min_devices=1)
    assert devices[0].check_in()["task"]["has_class_embedding"] is False
