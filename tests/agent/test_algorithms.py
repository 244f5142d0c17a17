"""Client-side training: losses against hand-computed values, w_c init, the
update's tensor spec as the coordinator checks it, frozen BatchNorm, device choice."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from coordinator.strategies import make_strategy
from device_agent import algorithms
from device_agent.algorithms import (
    Objective,
    cosface_loss,
    float_delta,
    init_class_embedding,
    nearest_centres,
    pick_device,
    positive_loss,
    random_flip,
    train_local,
)
from fedface_common import tensors
from fedface_common.face.checkpoint import decode_model
from fedface_common.wire import CLASS_EMBEDDING_TENSOR, MANIFEST_METADATA_KEY, TrainingConfig

from .fixtures import TINY, tiny_model_bytes

torch.set_num_threads(1)


def cfg(algorithm: str = "fedface", **kw: object) -> TrainingConfig:
    base: dict[str, object] = {"algorithm": algorithm, "local_epochs": 2, "batch_size": 4, "learning_rate": 0.1}
    base.update(kw)
    return TrainingConfig.model_validate(base)


@pytest.fixture(scope="module")
def model_file() -> bytes:
    return tiny_model_bytes()


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    return torch.randn(6, 3, TINY.input_size, TINY.input_size, generator=torch.Generator().manual_seed(1))


# --- losses -------------------------------------------------------------------------------


def test_positive_loss_hand_computed() -> None:
    # cos = 1 and 0; (0.9 - 1)+ = 0, (0.9 - 0)+ = 0.9 -> mean(0, 0.81) = 0.405; norms do not matter.
    f = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    assert positive_loss(f, torch.tensor([5.0, 0.0]), 0.9).item() == pytest.approx(0.405)
    # cos = 1/sqrt(2): (0.9 - 0.70711)^2
    f2 = torch.tensor([[1.0, 1.0]])
    assert positive_loss(f2, torch.tensor([1.0, 0.0]), 0.9).item() == pytest.approx((0.9 - 2**-0.5) ** 2)


def test_cosface_loss_hand_computed() -> None:
    # cos to (w_c, neg) = (1, 0); logits = s * (1 - m, 0) = (1, 0): CE = log(1 + e^-1).
    f = torch.tensor([[3.0, 0.0]])
    loss = cosface_loss(f, torch.tensor([1.0, 0.0]), torch.tensor([[0.0, 2.0]]), scale=2.0, margin=0.5)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)))
    # Two negatives at cos 0.6 and -1, s=4, m=0.2: logits (3.2, 2.4, -4).
    f = torch.tensor([[1.0, 0.0]])
    negs = torch.tensor([[0.6, 0.8], [-1.0, 0.0]])
    z = [4 * 0.8, 4 * 0.6, -4.0]
    expected = -z[0] + math.log(sum(math.exp(v) for v in z))
    assert cosface_loss(f, torch.tensor([1.0, 0.0]), negs, 4.0, 0.2).item() == pytest.approx(expected, rel=1e-5)


def test_nearest_centres_by_cosine() -> None:
    centres = torch.tensor([[0.0, 1.0], [10.0, 1.0], [-1.0, 0.0], [0.7, 0.7], [1.0, -0.5]])
    assert nearest_centres(torch.tensor([2.0, 0.0]), centres, 2).tolist() == [1, 4]
    assert len(nearest_centres(torch.tensor([1.0, 0.0]), centres, 99)) == 5  # K capped at C


def test_private_objective_uses_the_k_nearest_centres() -> None:
    rng = np.random.default_rng(0)
    centres = torch.from_numpy(rng.normal(size=(50, 8)).astype(np.float32))
    w = torch.from_numpy(rng.normal(size=8).astype(np.float32))
    obj = Objective(cfg("fedface-private", params={"k_negatives": 5}), w, centres)
    cos = F.normalize(centres, dim=1) @ F.normalize(w, dim=0)
    expected = set(torch.argsort(cos, descending=True)[:5].tolist())
    assert obj.negatives is not None
    chosen = {int(torch.nonzero((centres == row).all(dim=1))[0]) for row in obj.negatives}
    assert chosen == expected


def test_private_anchor_adds_the_drift_of_cosines_to_all_centres_by_hand() -> None:
    centres = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    w = torch.tensor([0.0, -1.0])
    start = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # two photos' features at the start of the round
    obj = Objective(cfg("fedface-private", params={"k_negatives": 1, "anchor": 2.0, "scale": 1.0,
                                                   "cosface_margin": 0.0}), w, centres)
    obj.set_reference(start)
    moved = torch.tensor([[0.0, 1.0]])  # photo 0 now points where photo 1 did
    # cosines to the centres go from (1, 0, -1) to (0, 1, 0): squared drift 1 + 1 + 1 = 3
    base = cosface_loss(moved, w, obj.negatives, 1.0, 0.0)  # type: ignore[arg-type]
    got = obj(moved, w, torch.tensor([0]))
    assert math.isclose(float(got), float(base) + 2.0 * 3.0, rel_tol=1e-6)
    assert math.isclose(float(obj(moved, w, torch.tensor([1]))), float(base), rel_tol=1e-6)  # no drift
    with pytest.raises(ValueError, match="indices"):
        obj(moved, w)


def test_private_anchor_keeps_local_training_from_shifting_every_face(model_file: bytes,
                                                                      photos: torch.Tensor) -> None:
    """With the anchor, a round of local training moves the features' cosines to
    the public centres less than without it (same seed, same photos)."""
    base = tensors.decode(model_file)
    centres = np.random.default_rng(4).normal(size=(20, TINY.embedding_dim)).astype(np.float32)
    c = F.normalize(torch.from_numpy(centres), dim=1)
    before = F.normalize(algorithms.embed(decode_model(model_file).model, photos), dim=1) @ c.T
    drift = {}
    for anchor in (0.0, 50.0):
        m = decode_model(model_file).model
        train_local(m, base, photos, cfg("fedface-private", local_epochs=3, learning_rate=0.2,
                                         params={"k_negatives": 8, "anchor": anchor}), centres=centres, seed=0)
        after = F.normalize(algorithms.embed(m, photos), dim=1) @ c.T
        drift[anchor] = float((after - before).pow(2).sum(dim=1).mean())
    assert drift[50.0] < 0.5 * drift[0.0]


def test_unknown_algorithm_is_refused() -> None:
    with pytest.raises(algorithms.UnsupportedAlgorithm):
        Objective(cfg("fedsgd"), torch.ones(4), None)


# --- w_c, augmentation, delta -------------------------------------------------------------


def test_wc_init_is_the_normalised_mean_feature(model_file: bytes, photos: torch.Tensor) -> None:
    model = decode_model(model_file).model
    w = init_class_embedding(model, photos, batch_size=4)
    with torch.no_grad():
        feats = model.eval()(photos)
    expected = feats.mean(0) / feats.mean(0).norm()
    assert torch.allclose(w, expected, atol=1e-5)
    assert w.norm().item() == pytest.approx(1.0, abs=1e-5)


def test_random_flip_flips_about_half() -> None:
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2).repeat(50, 1, 1, 1)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert bool((flipped | kept).all()) and 20 < int(flipped.sum()) < 80


def test_float_delta_skips_ints_and_zeroes_extras() -> None:
    lin = torch.nn.Linear(2, 1)
    base: dict[str, np.ndarray] = {"weight": np.zeros((1, 2), np.float32), "bias": np.zeros(1, np.float32),
            "bn.num_batches_tracked": np.array(3, np.int64), "pretrain.class_centres": np.ones((3, 2), np.float32)}
    with torch.no_grad():
        lin.weight.fill_(2.0)
        lin.bias.fill_(-1.0)
    delta = float_delta(base, lin)
    assert set(delta) == {"weight", "bias", "pretrain.class_centres"}
    assert delta["weight"].tolist() == [[2.0, 2.0]] and delta["bias"].tolist() == [-1.0]
    assert not delta["pretrain.class_centres"].any()
    assert all(a.dtype == np.float32 for a in delta.values())


# --- local training -----------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["fedface", "fedavg", "fedface-private"])
def test_update_matches_the_servers_spec(algorithm: str, model_file: bytes, photos: torch.Tensor) -> None:
    # A model file that also holds an int64 BN counter and a pretrain extra: the server's spec
    # asks for a delta of every float tensor of the file and nothing else.
    arrays = tensors.decode(model_file)
    arrays["bn_embedding.num_batches_tracked"] = np.array(7, np.int64)
    arrays["pretrain.class_centres"] = np.eye(4, TINY.embedding_dim, dtype=np.float32)
    meta = tensors.metadata_of(model_file)
    file_bytes = tensors.encode(arrays, {MANIFEST_METADATA_KEY: meta[MANIFEST_METADATA_KEY]})
    base = tensors.decode(file_bytes)
    centres = np.random.default_rng(0).normal(size=(10, TINY.embedding_dim)).astype(np.float32)
    result = train_local(decode_model(model_file).model, base, photos, cfg(algorithm, local_epochs=1),
                         centres=centres if algorithm == "fedface-private" else None, seed=0)
    update = result.update_tensors(algorithm)
    expected = make_strategy(algorithm).update_spec(tensors.spec_of(base), TINY.embedding_dim)
    tensors.check_spec(tensors.spec_of(update), expected)  # raises on any difference
    assert "bn_embedding.num_batches_tracked" not in update
    assert (CLASS_EMBEDDING_TENSOR in update) == (algorithm != "fedface-private")
    assert all(a.dtype == np.float32 and np.isfinite(a).all() for a in update.values())
    assert np.linalg.norm(result.class_embedding) == pytest.approx(1.0, abs=1e-5)
    tensors.decode(tensors.encode(update), expected)  # what the server's intake does


def test_training_reduces_the_loss_and_freezes_bn_stats(model_file: bytes, photos: torch.Tensor) -> None:
    base = tensors.decode(model_file)
    # Start from a w_c far from the photos' features so there is a loss to reduce.
    w0 = -init_class_embedding(decode_model(model_file).model, photos).numpy()
    steps: list[tuple[int, int, int]] = []
    result = train_local(decode_model(model_file).model, base, photos,
                         cfg("fedface", local_epochs=4, learning_rate=0.2, params={"margin": 0.9}),
                         class_embedding=w0, seed=0, on_step=lambda e, b, n: steps.append((e, b, n)))
    m = result.metrics
    assert m["loss_before"] == pytest.approx(positive_loss(torch.ones(1, 1), -torch.ones(1), 0.9).item(), rel=0.2)
    assert float(m["loss_after"]) < 0.5 * float(m["loss_before"])
    assert float(m["cos_mean_feature_wc"]) > 0
    assert m["num_samples"] == 6 and m["steps"] == 8 and len(steps) == 8 and steps[-1] == (3, 1, 2)
    assert m["wc_initialised"] == 0
    running = [k for k in result.delta if k.endswith(("running_mean", "running_var"))]
    assert running and all(not result.delta[k].any() for k in running)
    trained = [k for k in result.delta if k.endswith("conv.weight")]
    assert any(result.delta[k].any() for k in trained)


def test_private_training_with_adam_reduces_the_loss(model_file: bytes, photos: torch.Tensor) -> None:
    centres = np.random.default_rng(0).normal(size=(20, TINY.embedding_dim)).astype(np.float32)
    result = train_local(decode_model(model_file).model, tensors.decode(model_file), photos,
                         cfg("fedface-private", optimizer="adam", learning_rate=0.01, local_epochs=3,
                             params={"k_negatives": 4, "scale": 16.0, "cosface_margin": 0.2}),
                         centres=centres, seed=0)
    assert result.metrics["k_negatives"] == 4
    assert float(result.metrics["loss_after"]) < float(result.metrics["loss_before"])


def test_gradient_clipping_bounds_the_update(model_file: bytes, photos: torch.Tensor) -> None:
    w0 = -init_class_embedding(decode_model(model_file).model, photos).numpy()
    result = train_local(decode_model(model_file).model, tensors.decode(model_file), photos,
                         cfg("fedface", local_epochs=1, batch_size=3, learning_rate=0.1, momentum=0.9,
                             params={"max_grad_norm": 0.01}), class_embedding=w0, seed=0)
    # Two SGD steps with momentum 0.9 and gradients clipped to norm c move the weights
    # by at most lr * c * (1 + 1.9).
    norm = math.sqrt(sum(float((d.astype(np.float64) ** 2).sum()) for d in result.delta.values()))
    assert 0 < norm <= 0.1 * 0.01 * 2.9 + 1e-6


def test_training_refuses_no_photos(model_file: bytes) -> None:
    with pytest.raises(ValueError, match="no photos"):
        train_local(decode_model(model_file).model, tensors.decode(model_file), torch.empty(0, 3, 32, 32), cfg())


def test_wc_lr_scale_zero_keeps_wc_and_trains_the_backbone(model_file: bytes, photos: torch.Tensor) -> None:
    w0 = -init_class_embedding(decode_model(model_file).model, photos).numpy()
    result = train_local(decode_model(model_file).model, tensors.decode(model_file), photos,
                         cfg("fedface", params={"wc_lr_scale": 0.0}), class_embedding=w0, seed=0)
    np.testing.assert_allclose(result.class_embedding, w0 / np.linalg.norm(w0), atol=1e-6)
    assert any(result.delta[k].any() for k in result.delta if k.endswith("conv.weight"))
    moved = train_local(decode_model(model_file).model, tensors.decode(model_file), photos,
                        cfg("fedface"), class_embedding=w0, seed=0)
    assert not np.allclose(moved.class_embedding, w0 / np.linalg.norm(w0), atol=1e-3)


def test_frozen_parameters_get_a_zero_delta(model_file: bytes, photos: torch.Tensor) -> None:
    w0 = -init_class_embedding(decode_model(model_file).model, photos).numpy()
    result = train_local(decode_model(model_file).model, tensors.decode(model_file), photos,
                         cfg("fedface", params={"frozen": ["bn_embedding."]}), class_embedding=w0, seed=0)
    frozen = [k for k in result.delta if k.startswith("bn_embedding.")]
    assert frozen and all(not result.delta[k].any() for k in frozen)
    assert any(result.delta[k].any() for k in result.delta if k.endswith("conv.weight"))


def test_a_frozen_name_that_matches_nothing_is_refused(model_file: bytes, photos: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"match no parameter.*bn_embeding"):
        train_local(decode_model(model_file).model, tensors.decode(model_file), photos,
                    cfg("fedface", params={"frozen": ["bn_embeding."]}), seed=0)


@pytest.mark.parametrize("frozen", ["bn_embedding.", [""], [3], {"bn_embedding.": True}])
def test_frozen_that_is_not_a_list_of_prefixes_is_refused(frozen: object, model_file: bytes,
                                                          photos: torch.Tensor) -> None:
    model = decode_model(model_file).model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="frozen"):
        train_local(model, tensors.decode(model_file), photos, cfg("fedface", params={"frozen": frozen}), seed=0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# --- device choice ------------------------------------------------------------------------


@pytest.mark.parametrize(("cuda", "mps", "choice", "expected"), [
    (True, True, "auto", "cuda"), (False, True, "auto", "mps"), (False, False, "auto", "cpu"),
    (True, True, "cpu", "cpu"), (True, False, "cuda", "cuda"), (False, True, "mps", "mps"),
])
def test_pick_device(monkeypatch: pytest.MonkeyPatch, cuda: bool, mps: bool, choice: str, expected: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert pick_device(choice).type == expected


def test_pick_device_refuses_a_missing_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="cuda"):
        pick_device("cuda")
    with pytest.raises(RuntimeError, match="mps"):
        pick_device("mps")
    with pytest.raises(ValueError):
        pick_device("tpu")
