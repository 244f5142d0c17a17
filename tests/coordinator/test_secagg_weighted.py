"""Sample-weighted secure rounds and secure statistics rounds over real HTTP on Postgres and Redis: a secure
round with `max_weight` commits what a plain round with the same clip and `sample_cap` commits, within the
fixed-point bound, while every device's count header says 1; `fedface` rounds that send moments
(`embedding_stats`, `embedding_lda_dims`) run under secure aggregation with no class embedding sent or stored
and commit the plain round's model; a forged weight fails the round; and the settings that cannot work are
refused before anything is stored."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import create_engine, text

from fedface_common.secagg.device import encode_input
from fedface_common.secagg.messages import MASKED_INPUT_TENSOR
from fedface_common.secagg.task import SECAGG_META_KEY
from fedface_common.tensors import decode, encode
from fedface_common.wire import (
    CLASS_EMBEDDING_TENSOR,
    EMBEDDING_BN_MEAN,
    EMBEDDING_BN_VAR,
    HEAD_MEAN,
    HEAD_SECOND_MOMENT,
    HEAD_WITHIN_SCATTER,
)
from tests.support.fleet import (
    ADMIN,
    EMBEDDING_DIM,
    Device,
    delta,
    enroll,
    get_round,
    register_model,
    start_round,
    tiny_model,
)
from tests.support.live import wait_until
from tests.support.secure import SecureDevice, run_secure_round, secure_params

CLIP, CAP = 10.0, 8
COUNTS = [2, 5, 9, 30]  # capped at 8: weights 2, 5, 8, 8
MOMENTS = (EMBEDDING_BN_MEAN, EMBEDDING_BN_VAR, HEAD_MEAN, HEAD_SECOND_MOMENT, HEAD_WITHIN_SCATTER)


def _model(api: httpx.Client, version_id: int) -> dict[str, np.ndarray]:
    return decode(api.get(f"/v1/admin/models/{version_id}/weights", headers=ADMIN).content)


def _plain_round(api: httpx.Client, algorithm: str, params: dict[str, Any], updates: list[dict[str, np.ndarray]],
                 base_version: int) -> dict[str, Any]:
    devices = enroll(api, len(updates))
    rnd = start_round(api, algorithm=algorithm, target_devices=len(updates), min_devices=len(updates),
                      params=params)
    for d, u, count in zip(devices, updates, COUNTS, strict=True):
        assert d.check_in()["status"] == "task"
        r = d.submit(rnd["id"], encode(u), num_samples=count, base_version=base_version)
        assert r.status_code == 200, r.text
    wait_until(lambda: get_round(api, rnd["id"])["state"] == "committed", what="plain commit")
    return get_round(api, rnd["id"])


def _secure_round(api: httpx.Client, algorithm: str, params: dict[str, Any], updates: list[dict[str, np.ndarray]],
                  enrolled: list[Device] | None = None) -> dict[str, Any]:
    enrolled = enrolled or enroll(api, len(updates))
    devices = [SecureDevice(d, u, num_samples=c) for d, u, c in zip(enrolled, updates, COUNTS, strict=True)]
    rnd = start_round(api, algorithm=algorithm, target_devices=len(updates), min_devices=3, deadline_s=30,
                      params=params)
    done = run_secure_round(api, int(rnd["id"]), devices)
    assert done["state"] == "committed", done["failure_reason"]
    return done


def _counts_sent(database_url: str, round_id: int) -> list[int]:
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        counts = [int(c) for (c,) in conn.execute(text("SELECT num_samples FROM updates WHERE round_id = :r"),
                                                  {"r": round_id})]
    engine.dispose()
    return counts


def _store_class_embeddings(database_url: str, devices: list[Device], version_id: int) -> None:
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    rows = np.random.default_rng(3).standard_normal((len(devices), EMBEDDING_DIM)).astype(np.float32)
    with engine.begin() as conn:
        for d, row in zip(devices, rows, strict=True):
            conn.execute(text("INSERT INTO class_embeddings (device_id, vector, dim, version_id, updated_at)"
                              " VALUES (:d, :v, :dim, :version, now())"),
                         {"d": d.device_id, "v": row.tobytes(), "dim": EMBEDDING_DIM, "version": version_id})
    engine.dispose()


def _class_embeddings(database_url: str) -> dict[str, tuple[bytes, int]]:
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        rows = {str(d): (bytes(v), int(version)) for d, v, version in conn.execute(
            text("SELECT device_id, vector, version_id FROM class_embeddings"))}
    engine.dispose()
    return rows


def test_a_weighted_secure_round_commits_the_capped_plain_rounds_model(api: httpx.Client, database_url: str) -> None:
    base = tiny_model()
    v1 = register_model(api, base)
    # The third update is longer than the clip: both rounds scale it down to CLIP.
    updates = [delta(i, embedding=False, scale=4.0 if i == 2 else 1.0) for i in range(len(COUNTS))]
    norms = [np.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in u.values())) for u in updates]
    assert norms[2] > CLIP and max(norms[:2] + norms[3:]) < CLIP
    plain = _plain_round(api, "fedavg-plain", {"robust": {"norm_bound": CLIP, "sample_cap": CAP}}, updates,
                         v1["id"])
    reference = _model(api, plain["result_version_id"])

    register_model(api, base)  # served again: the secure round starts from the same weights
    done = _secure_round(api, "fedavg-plain", secure_params(clip_norm=CLIP, max_weight=CAP), updates)
    secure = _model(api, done["result_version_id"])
    metrics = done["metrics"]["secagg"]
    weights = [min(c, CAP) for c in COUNTS]
    assert metrics["weights"] == "samples" and metrics["max_weight"] == CAP
    bound = metrics["error_bound_mean"]
    assert 0 < bound < 1e-5
    assert metrics["total_weight"] == pytest.approx(sum(weights) / CAP, abs=1e-6)
    assert _counts_sent(database_url, done["id"]) == [1] * len(COUNTS)  # no count leaves a device in the clear
    clipped = [{k: v * min(1.0, CLIP / n) for k, v in u.items()} for u, n in zip(updates, norms, strict=True)]
    for name in ("layer.weight", "layer.bias"):
        want = base[name] + sum(w * u[name] for w, u in zip(weights, clipped, strict=True)) / sum(weights)
        np.testing.assert_allclose(secure[name], reference[name], rtol=0, atol=bound + 1e-6)
        np.testing.assert_allclose(secure[name], want, rtol=0, atol=bound + 1e-6)


def _embedding_model(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A model with a backbone layer, the embedding projection (6 head features) and its BatchNorm."""
    d = EMBEDDING_DIM
    return {**tiny_model(), "project.weight": rng.standard_normal((d, 6, 1, 1)).astype(np.float32),
            "bn_embedding.running_mean": np.zeros(d, np.float32), "bn_embedding.running_var": np.ones(d, np.float32),
            "bn_embedding.weight": np.ones(d, np.float32), "bn_embedding.bias": np.zeros(d, np.float32)}


def _statistics_update(rng: np.random.Generator, base: dict[str, np.ndarray], lda: bool) -> dict[str, np.ndarray]:
    """Small trained deltas, the embedding BN's moments (embedding_stats) or the head's (lda), and a w_c."""
    out: dict[str, np.ndarray] = {k: (rng.standard_normal(v.shape) * 0.3).astype(np.float32) for k, v in base.items()
           if v.dtype.kind == "f"}
    if lda:
        h = rng.standard_normal((5, 6)) + 2 * rng.standard_normal(6)
        own = h - h.mean(0)
        out.update({HEAD_MEAN: h.mean(0), HEAD_SECOND_MOMENT: h.T @ h / 5, HEAD_WITHIN_SCATTER: own.T @ own / 5})
    else:
        z = rng.standard_normal((7, EMBEDDING_DIM)) * 1.5 + rng.standard_normal(EMBEDDING_DIM)
        out.update({EMBEDDING_BN_MEAN: z.mean(0), EMBEDDING_BN_VAR: (z * z).mean(0) - 1.0})
    out = {k: np.asarray(v, np.float32) for k, v in out.items()}
    out[CLASS_EMBEDDING_TENSOR] = rng.standard_normal(EMBEDDING_DIM).astype(np.float32)
    return out


def _group_norms(u: dict[str, np.ndarray]) -> tuple[float, float]:
    def norm(names: list[str]) -> float:
        return float(np.sqrt(sum(float(np.sum(u[n].astype(np.float64) ** 2)) for n in names)))
    return (norm([k for k in u if k not in MOMENTS and k != CLASS_EMBEDDING_TENSOR]),
            norm([k for k in u if k in MOMENTS]))


@pytest.mark.parametrize("lda", [False, True], ids=["embedding_stats", "embedding_lda_dims"])
def test_a_secure_statistics_round_commits_the_plain_rounds_model_and_stores_no_class_embedding(
        api: httpx.Client, database_url: str, lda: bool) -> None:
    rng = np.random.default_rng(11)
    base = _embedding_model(rng)
    v1 = register_model(api, base)
    updates = [_statistics_update(rng, base, lda) for _ in COUNTS]
    stats_clip = 100.0
    for u in updates:  # neither round clips anything: the two compute the same capped weighted means
        deltas, moments = _group_norms(u)
        assert deltas < CLIP and moments < stats_clip
    statistics: dict[str, Any] = {"embedding_lda_dims": 2} if lda else {"embedding_stats": True}
    plain = _plain_round(api, "fedface", {**statistics, "robust": {"norm_bound": "off", "sample_cap": CAP}},
                         updates, v1["id"])
    reference = _model(api, plain["result_version_id"])

    again = register_model(api, base)  # served again (the plain round's W rows lie outside its lineage now)
    devices = enroll(api, len(COUNTS))
    _store_class_embeddings(database_url, devices, again["id"])  # rows from an earlier round of these devices
    stored = _class_embeddings(database_url)
    assert len(stored) == len(COUNTS)
    secure_updates = [{k: v for k, v in u.items() if k != CLASS_EMBEDDING_TENSOR} for u in updates]
    params = {**statistics, **secure_params(clip_norm=CLIP, max_weight=CAP, statistics_clip_norm=stats_clip)}
    done = _secure_round(api, "fedface", params, secure_updates, devices)
    metrics = done["metrics"]["secagg"]
    assert metrics["weights"] == "samples" and metrics["statistics_clip_norm"] == stats_clip
    assert 0 < metrics["statistics_mean_norm"] <= stats_clip and 0 < metrics["mean_norm"] <= CLIP
    # No row of W was sent: an embedding_stats round leaves W as it was (no new row, no spreadout); a
    # discriminant round drops it, as a plain one does.
    if lda:
        assert _class_embeddings(database_url) == {} and done["metrics"]["class_embeddings_dropped"] == len(COUNTS)
    else:
        assert _class_embeddings(database_url) == stored and "class_embeddings_dropped" not in done["metrics"]
    secure = _model(api, done["result_version_id"])
    bound = max(metrics["error_bound_mean"], metrics["statistics_error_bound_mean"])
    assert 0 < bound < 1e-5
    # float32 storage of the model adds its own rounding; the discriminant of moments within the bound moves
    # the folded projection by less than that here (its eigenvalues are well apart).
    for name, value in reference.items():
        np.testing.assert_allclose(secure[name], value, rtol=0, atol=bound + 1e-6, err_msg=name)
    if not lda:
        weights = np.array([min(c, CAP) for c in COUNTS], np.float64)
        mean = sum(w * u[EMBEDDING_BN_MEAN] for w, u in zip(weights, updates, strict=True)) / weights.sum()
        np.testing.assert_allclose(secure[EMBEDDING_BN_MEAN], mean, rtol=0, atol=bound + 1e-6)


def test_settings_that_cannot_work_are_refused_and_nothing_is_stored(api: httpx.Client) -> None:
    register_model(api)
    before = api.get("/v1/admin/rounds", headers=ADMIN).json()
    refusals = [
        ("fedavg-plain", {**secure_params(max_weight=CAP), "dp": {"noise_multiplier": 1.0, "clip": CLIP}},
         "max_weight"),
        ("fedface-private", {**secure_params(max_weight=CAP),
                             "dp": {"mode": "distributed", "noise_multiplier": 1.0, "clip": CLIP}}, "max_weight"),
        ("fedface", {"embedding_stats": True, **secure_params()}, "statistics_clip_norm"),
        ("fedavg", {"embedding_lda_dims": 2, **secure_params()}, "statistics_clip_norm"),
        ("fedavg-plain", secure_params(statistics_clip_norm=5.0), "statistics_clip_norm"),
        ("fedface", secure_params(statistics_clip_norm=5.0), "statistics round"),
    ]
    for algorithm, params, what in refusals:
        r = api.post("/v1/admin/rounds", headers=ADMIN, json={
            "algorithm": algorithm, "target_devices": 3, "min_devices": 2, "over_selection": 1.0, "params": params})
        assert r.status_code == 422 and r.json()["code"] == "invalid_config", (algorithm, r.text)
        assert what in r.json()["detail"], (what, r.json()["detail"])
    assert api.get("/v1/admin/rounds", headers=ADMIN).json() == before


def test_a_forged_weight_coordinate_fails_the_round_with_its_reason(api: httpx.Client) -> None:
    """A device encodes its weight coordinate as -4 clip_norm (any uint32 reaches the sum unseen): the total
    weight of 4 devices is then at most 3 - 4 < 0, which no honest devices give, and no model is written."""
    register_model(api)
    versions = len(api.get("/v1/admin/models", headers=ADMIN).json())
    updates = [delta(i, embedding=False) for i in range(len(COUNTS))]
    enrolled = enroll(api, len(updates))
    devices = [SecureDevice(d, u, num_samples=c) for d, u, c in zip(enrolled, updates, COUNTS, strict=True)]
    cheat = devices[0]

    def forged(sa: Any, forwarded: Any) -> bytes:
        assert cheat.state is not None
        x = encode_input(sa.params, sa.layout, cheat.update, cheat.num_samples)
        x[-1] = np.array([round(-4 * CLIP * sa.params.scale)], np.int64).astype(np.uint32)[0]
        cheat.state, masked, meta = cheat.state.mask(x, forwarded)
        return encode({MASKED_INPUT_TENSOR: masked}, {SECAGG_META_KEY: meta.model_dump_json()})

    cheat.masked_body = forged  # type: ignore[method-assign]
    rnd = start_round(api, algorithm="fedavg-plain", target_devices=len(updates), min_devices=3, deadline_s=30,
                      params=secure_params(clip_norm=CLIP, max_weight=CAP))
    done = run_secure_round(api, int(rnd["id"]), devices)
    assert done["state"] == "failed" and "weight coordinate sums to" in done["failure_reason"], done
    assert len(api.get("/v1/admin/models", headers=ADMIN).json()) == versions
