"""The discriminant transform's defining identities on random scatters (property
tests), and its fold into the model: the folded model's features are T (z - mean)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.strategies.discriminant import discriminant_transform, fold_into_embedding, inverse_sqrt
from fedface_common.face.checkpoint import load_numpy_state, model_to_numpy
from fedface_common.face.manifest import ModelManifest
from fedface_common.face.model import MobileFaceNet


def _scatters(seed: int, d: int, classes: int, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Total and within-class scatter (about their means) of a random labelled sample."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d)) * rng.uniform(0.1, 3, size=d)
    z = np.repeat(centres, per_class, axis=0) + rng.normal(size=(classes * per_class, d)) @ rng.normal(size=(d, d))
    own = z - np.repeat(z.reshape(classes, per_class, d).mean(axis=1), per_class, axis=0)
    zc = z - z.mean(axis=0)
    return zc.T @ zc / len(z), own.T @ own / len(z)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), d=st.integers(2, 12), classes=st.integers(3, 20), shrinkage=st.floats(0, 2))
def test_rows_whiten_the_shrunk_within_scatter_and_diagonalise_the_between(seed: int, d: int, classes: int,
                                                                        shrinkage: float) -> None:
    total, within = _scatters(seed, d, classes, per_class=d + 2)
    dims = max(1, d // 2)
    t = discriminant_transform(total, within, dims, shrinkage)
    assert t.shape == (dims, d)
    shrunk = within + shrinkage * np.trace(within) / d * np.eye(d)
    np.testing.assert_allclose(t @ shrunk @ t.T, np.eye(dims), atol=1e-6)
    between = t @ (total - within) @ t.T
    np.testing.assert_allclose(between, np.diag(np.diag(between)), atol=1e-6 * max(1.0, np.abs(between).max()))
    assert (np.diff(np.diag(between)) <= 1e-9).all()  # most discriminative first


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), d=st.integers(1, 10))
def test_inverse_sqrt_of_a_positive_definite_matrix(seed: int, d: int) -> None:
    a = np.random.default_rng(seed).normal(size=(d, d))
    s = a @ a.T + np.eye(d)
    r = inverse_sqrt(s)
    np.testing.assert_allclose(r @ s @ r, np.eye(d), atol=1e-8)


def test_inverse_sqrt_stays_finite_on_a_singular_matrix() -> None:
    assert np.isfinite(inverse_sqrt(np.zeros((3, 3)))).all()


@pytest.mark.parametrize(("total", "within", "dims", "match"), [
    (np.eye(3), np.eye(2), 1, "square and alike"), (np.eye(3), np.eye(3), 0, "dims"),
    (np.eye(3), np.eye(3), 4, "dims"),
])
def test_bad_arguments_are_refused(total: np.ndarray, within: np.ndarray, dims: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        discriminant_transform(total, within, dims, 0.1)


def test_a_transform_that_does_not_fit_the_projection_is_refused() -> None:
    weights = {"project.weight": np.zeros((4, 6, 1, 1), np.float32)}
    for transform, mean in ((np.zeros((5, 6)), np.zeros(6)), (np.zeros((2, 5)), np.zeros(5)),
                            (np.zeros((2, 6)), np.zeros(5))):
        with pytest.raises(ValueError, match="do not fit"):
            fold_into_embedding(weights, transform, mean)


def test_folded_model_computes_the_transform_of_the_projection_input() -> None:
    torch.manual_seed(0)
    manifest = ModelManifest(width=0.25, input_size=32, embedding_dim=16)
    model = manifest.build().eval()
    assert isinstance(model, MobileFaceNet)
    x = torch.randn(5, 3, 32, 32)
    seen: list[torch.Tensor] = []
    hook = model.project.register_forward_pre_hook(lambda _, inp: seen.append(inp[0].detach().double().flatten(1)))
    with torch.no_grad():
        model(x)
    hook.remove()
    h = seen[0].numpy()
    c = h.shape[1]
    rng = np.random.default_rng(1)
    transform, mean = rng.normal(size=(6, c)), rng.normal(size=(c,))
    load_numpy_state(model, fold_into_embedding(model_to_numpy(model), transform, mean))
    with torch.no_grad():
        features = model.features(x).double().numpy()
    expected = np.zeros((5, 16))
    expected[:, :6] = (h - mean) @ transform.T
    # BatchNorm divides by sqrt(1 + eps) everywhere: the same direction, a uniform scale.
    np.testing.assert_allclose(features * np.sqrt(1 + model.bn_embedding.eps), expected, rtol=1e-4, atol=1e-4)
