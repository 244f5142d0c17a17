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
from device_agent.algorithms import train_local
from device_agent.embedding_stats import STAT_TENSORS, embedding_bn, embedding_stat_deltas
from fedface_common import tensors
from fedface_common.face.checkpoint import decode_model
from fedface_common.wire import TrainingConfig

from .fixtures import TINY, tiny_model_bytes

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model_file() -> bytes:
    return tiny_model_bytes()


def _photos(n: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, 3, TINY.input_size, TINY.input_size, generator=torch.Generator().manual_seed(seed)) + shift


def _pre_bn(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    seen: list[torch.Tensor] = []
    hook = embedding_bn(model).register_forward_pre_hook(lambda _, inp: seen.append(inp[0].detach()))
    model.eval()
    with torch.no_grad():
        model(x)
    hook.remove()
    return torch.cat(seen).double().numpy()


def test_device_moments_by_hand(model_file: bytes) -> None:
    model = decode_model(model_file).model
    x = _photos(7, 0)
    feats = _pre_bn(model, x)
    bn = embedding_bn(model)
    assert bn.running_mean is not None and bn.running_var is not None
    mean0, var0 = bn.running_mean.double().numpy(), bn.running_var.double().numpy()
    deltas = embedding_stat_deltas(model, x, batch_size=3)
    np.testing.assert_allclose(deltas[STAT_TENSORS[0]], feats.mean(0) - mean0, rtol=1e-5, atol=1e-5)
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
    np.testing.assert_allclose(weights[STAT_TENSORS[0]], pooled.mean(0), rtol=1e-4, atol=1e-5)
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
