"""Federated re-estimation of the embedding BN: each device's moments against a
hand computation, and the server's weighted mean of several devices' deltas
against the statistics of their pooled photos."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import torch

from coordinator.strategies import make_strategy
from coordinator.strategies.base import Accumulator
from coordinator.strategies.discriminant import discriminant_transform, fold_into_embedding
from device_agent.algorithms import train_local
from device_agent.embedding_stats import STAT_TENSORS, discriminant_moments, embedding_bn, embedding_stat_deltas
from fedface_common import tensors
from fedface_common.face.checkpoint import decode_model
from fedface_common.wire import HEAD_MEAN, HEAD_SECOND_MOMENT, HEAD_WITHIN_SCATTER, TrainingConfig

from .fixtures import TINY, tiny_model_bytes

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model_file() -> bytes:
    return tiny_model_bytes()


def _photos(n: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, 3, TINY.input_size, TINY.input_size, generator=torch.Generator().manual_seed(seed)) + shift


def _inputs_to(layer: str, model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """What `layer` receives for the photos x, flattened per photo (computed here, not by the agent)."""
    seen: list[torch.Tensor] = []
    hook = model.get_submodule(layer).register_forward_pre_hook(
        lambda _, inp: seen.append(inp[0].detach().flatten(1)))
    model.eval()
    with torch.no_grad():
        model(x)
    hook.remove()
    return torch.cat(seen).double().numpy()


def _pre_bn(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    return _inputs_to("bn_embedding", model, x)


def _head(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    return _inputs_to("project", model, x)


def _assert_close(actual: np.ndarray, expected: np.ndarray, rtol: float, err_msg: str = "") -> None:
    """allclose with the absolute tolerance scaled to the values: an untrained model's head features are
    ~1e-4 and their second moments ~1e-8, below any fixed atol that float32 rounding elsewhere needs."""
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=1e-6 * float(np.abs(expected).max()),
                               err_msg=err_msg)


def test_device_moments_by_hand(model_file: bytes) -> None:
    model = decode_model(model_file).model
    x = _photos(7, 0)
    feats = _pre_bn(model, x)
    bn = embedding_bn(model)
    assert bn.running_mean is not None and bn.running_var is not None
    mean0, var0 = bn.running_mean.double().numpy(), bn.running_var.double().numpy()
    deltas = embedding_stat_deltas(model, x, batch_size=3)
    _assert_close(deltas[STAT_TENSORS[0]], feats.mean(0) - mean0, 1e-5)
    np.testing.assert_allclose(deltas[STAT_TENSORS[1]], ((feats - mean0) ** 2).mean(0) - var0, rtol=1e-5, atol=1e-5)


def test_model_without_an_embedding_bn_is_refused() -> None:
    with pytest.raises(ValueError, match="bn_embedding"):
        embedding_stat_deltas(torch.nn.Linear(3, 2), torch.zeros(1, 3))


def test_training_sends_the_moments_only_when_asked(model_file: bytes) -> None:
    x = _photos(6, 1)
    base = tensors.decode(model_file)
    expected = embedding_stat_deltas(decode_model(model_file).model, x, 4)
    config = {"algorithm": "fedface", "local_epochs": 1, "batch_size": 4, "learning_rate": 0.1}
    asked = train_local(decode_model(model_file).model, base, x,
                        TrainingConfig.model_validate({**config, "params": {"embedding_stats": True}}), seed=0)
    plain = train_local(decode_model(model_file).model, base, x, TrainingConfig.model_validate(config), seed=0)
    for name in STAT_TENSORS:
        np.testing.assert_allclose(asked.delta[name], expected[name], rtol=1e-6)
        assert not plain.delta[name].any()  # frozen BN: statistics untouched unless asked


@pytest.mark.parametrize(("server_lr", "rounds"), [(1.0, 1), (5.0, 1), (1.0, 2)])
def test_server_mean_of_device_deltas_is_the_pooled_statistics(model_file: bytes, server_lr: float,
                                                               rounds: int) -> None:
    """One round sets the pooled mean and variance; another changes nothing.
    server_lr scales weight deltas, never statistics."""
    devices = [_photos(n, 10 + i, shift=0.5 * i) for i, n in enumerate((2, 5, 9))]
    strategy = make_strategy("fedface", {"server_lr": server_lr, "embedding_stats": True})
    weights = tensors.decode(model_file)
    for _ in range(rounds):
        model = decode_model(tensors.encode(weights, metadata=tensors.read_header(model_file)[1])).model
        acc = Accumulator()
        for x in devices:
            strategy.fold(acc, uuid.uuid4(), embedding_stat_deltas(model, x, 4), len(x))
        weights = strategy.apply_mean_delta(weights, acc)
    pooled = _pre_bn(decode_model(model_file).model, torch.cat(devices))
    _assert_close(weights[STAT_TENSORS[0]], pooled.mean(0), 1e-4)
    np.testing.assert_allclose(weights[STAT_TENSORS[1]], pooled.var(0), rtol=1e-3, atol=1e-5)


def test_server_clamps_a_negative_variance(model_file: bytes) -> None:
    strategy = make_strategy("fedface", {"embedding_stats": True})
    weights = tensors.decode(model_file)
    bad = {STAT_TENSORS[1]: -10.0 - weights[STAT_TENSORS[1]]}
    acc = Accumulator()
    strategy.fold(acc, uuid.uuid4(), bad, 3)
    assert (strategy.apply_mean_delta(weights, acc)[STAT_TENSORS[1]] == 0).all()


@pytest.mark.parametrize("strategy_name", ["fedface", "fedavg-plain"])
def test_without_embedding_stats_the_statistics_are_ordinary_deltas(model_file: bytes, strategy_name: str) -> None:
    """Other clients (e.g. ones training BN as usual) keep plain FedAvg: server_lr applies, no variance rule."""
    strategy = make_strategy(strategy_name, {"server_lr": 2.0})
    weights = tensors.decode(model_file)
    acc = Accumulator()
    strategy.fold(acc, uuid.uuid4(), {name: np.ones_like(weights[name]) for name in STAT_TENSORS}, 3)
    out = strategy.apply_mean_delta(weights, acc)
    for name in STAT_TENSORS:
        np.testing.assert_allclose(out[name], weights[name] + 2.0, rtol=1e-6)


# --- the discriminant round (embedding_lda_dims) ------------------------------------------

# 3 dimensions: the test's 4 devices span a 3-dimensional between-class scatter, and beyond it
# the discriminant directions are any basis of a null space.
LDA = {"embedding_lda_dims": 3, "embedding_lda_shrinkage": 0.2}


def test_device_head_moments_by_hand(model_file: bytes) -> None:
    model = decode_model(model_file).model
    x = _photos(6, 2)
    h = _head(model, x)
    own = h - h.mean(0)
    moments = discriminant_moments(model, x, batch_size=4)
    _assert_close(moments[HEAD_MEAN], h.mean(0), 1e-5)
    _assert_close(moments[HEAD_SECOND_MOMENT], h.T @ h / 6, 1e-4)
    _assert_close(moments[HEAD_WITHIN_SCATTER], own.T @ own / 6, 1e-4)


def test_mirror_counts_each_mirror_image_as_one_more_photo(model_file: bytes) -> None:
    model = decode_model(model_file).model
    x = _photos(5, 4)
    h = np.concatenate([_head(model, x), _head(model, torch.flip(x, dims=[3]))])
    own = h - h.mean(0)
    moments = discriminant_moments(model, x, batch_size=4, mirror=True)
    _assert_close(moments[HEAD_MEAN], h.mean(0), 1e-5)
    _assert_close(moments[HEAD_SECOND_MOMENT], h.T @ h / 10, 1e-4)
    _assert_close(moments[HEAD_WITHIN_SCATTER], own.T @ own / 10, 1e-4)
    plain = discriminant_moments(model, x, batch_size=4)
    scale = np.abs(plain[HEAD_WITHIN_SCATTER]).max()  # an untrained model's features are ~1e-4
    assert np.abs(plain[HEAD_WITHIN_SCATTER] - moments[HEAD_WITHIN_SCATTER]).max() > 0.1 * scale


def test_training_measures_mirror_images_when_the_round_asks(model_file: bytes) -> None:
    x = _photos(4, 5)
    config = {"algorithm": "fedface", "local_epochs": 0, "batch_size": 4, "learning_rate": 0.1,
              "params": {**LDA, "embedding_lda_mirror": True}}
    sent = train_local(decode_model(model_file).model, tensors.decode(model_file), x,
                       TrainingConfig.model_validate(config), seed=0).update_tensors("fedface")
    expected = discriminant_moments(decode_model(model_file).model, x, 4, mirror=True)
    for name in (HEAD_MEAN, HEAD_SECOND_MOMENT, HEAD_WITHIN_SCATTER):
        _assert_close(sent[name], expected[name], 1e-5, err_msg=name)


def test_training_sends_the_head_moments_only_when_asked(model_file: bytes) -> None:
    x = _photos(5, 3)
    base = tensors.decode(model_file)
    config = {"algorithm": "fedface", "local_epochs": 0, "batch_size": 4, "learning_rate": 0.1}
    asked = train_local(decode_model(model_file).model, base, x,
                        TrainingConfig.model_validate({**config, "params": LDA}), seed=0).update_tensors("fedface")
    plain = train_local(decode_model(model_file).model, base, x, TrainingConfig.model_validate(config),
                        seed=0).update_tensors("fedface")
    spec = make_strategy("fedface", LDA).update_spec(
        {k: tensors.TensorInfo("F32", v.shape) for k, v in base.items()}, TINY.embedding_dim)
    assert {k: v.shape for k, v in asked.items()} == {k: tuple(v.shape) for k, v in spec.items()}
    assert not {HEAD_MEAN, HEAD_SECOND_MOMENT, HEAD_WITHIN_SCATTER} & set(plain)


def test_server_discriminant_of_device_moments_is_the_pooled_one(model_file: bytes) -> None:
    """Folding each device's moments gives the LDA of all their photos, labelled by device."""
    devices = [_photos(n, 20 + i, shift=0.3 * i) for i, n in enumerate((2, 4, 7, 3))]
    model = decode_model(model_file).model
    strategy = make_strategy("fedface", LDA)
    acc = Accumulator()
    for x in devices:
        strategy.fold(acc, uuid.uuid4(), discriminant_moments(model, x, 4), len(x))
    weights = tensors.decode(model_file)
    federated = strategy.aggregate_weights(weights, acc)  # type: ignore[attr-defined]
    per_device = [_head(model, x) for x in devices]
    h = np.concatenate(per_device)
    own = np.concatenate([p - p.mean(0) for p in per_device])
    hc = h - h.mean(0)
    transform = discriminant_transform(hc.T @ hc / len(h), own.T @ own / len(h), 3, 0.2)
    pooled = fold_into_embedding(weights, transform, h.mean(0))
    for name in pooled:
        np.testing.assert_allclose(federated[name], pooled[name], rtol=2e-3, atol=1e-4, err_msg=name)


def test_server_survives_garbage_moments(model_file: bytes) -> None:
    """A device's matrices are only checked for shape and finiteness at upload: whatever it sends,
    the model that comes out is finite."""
    strategy = make_strategy("fedface", LDA)
    weights = tensors.decode(model_file)
    c = weights["project.weight"].shape[1]
    acc = Accumulator()
    bad = {HEAD_MEAN: np.full(c, 1e6, np.float32), HEAD_SECOND_MOMENT: -1e6 * np.ones((c, c), np.float32),
           HEAD_WITHIN_SCATTER: 1e6 * np.eye(c, dtype=np.float32)}
    strategy.fold(acc, uuid.uuid4(), bad, 3)
    out = strategy.aggregate_weights(weights, acc)  # type: ignore[attr-defined]
    assert all(np.isfinite(v).all() for v in out.values())


def test_lda_wider_than_the_embedding_is_refused(model_file: bytes) -> None:
    base = tensors.decode(model_file)
    strategy = make_strategy("fedface", {**LDA, "embedding_lda_dims": TINY.embedding_dim + 1})
    with pytest.raises(ValueError, match="exceeds"):
        strategy.update_spec({k: tensors.TensorInfo("F32", v.shape) for k, v in base.items()}, TINY.embedding_dim)
