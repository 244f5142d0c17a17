"""Federated linear discriminant analysis of the embedding, folded into the model.

Each device holds every photo of ONE person, so it alone can measure that
person's within-class scatter (its photos about their own mean); no
centralised system needs less. With `embedding_lda_dims` the devices send it,
with their mean and second moment, for h, the pooled head features that enter
the embedding's 1x1 projection (device_agent/embedding_stats.py); the server's
sample-weighted sums are exactly the pooled within-class and total scatters.
From those, LDA finds the directions in which identities differ most relative
to how one identity's photos vary (lighting, pose, expression), and rescales
each so that the within-class spread is one: cosine similarity after it scores
identity, not nuisance. The new embedding T (h - mean) is linear in h, so it
replaces the projection and the embedding BatchNorm exactly, and the model's
architecture and file format stay as they were. Working on h rather than on the
projection's output lets the discriminant choose among all c head features
instead of the d the pretrained projection kept (c = 256, d = 128 here).

Pure numpy, no I/O."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedface_common.wire import (
    EMBEDDING_BN_BIAS,
    EMBEDDING_BN_MEAN,
    EMBEDDING_BN_VAR,
    EMBEDDING_BN_WEIGHT,
    EMBEDDING_PROJECTION,
)

# Eigenvalues below this fraction of the largest are treated as zero (a singular
# within-class scatter, e.g. fewer photos than dimensions in a test).
_RELATIVE_FLOOR = 1e-9


def _symmetric(s: np.ndarray) -> np.ndarray:
    return (s + s.T) / 2


def inverse_sqrt(s: np.ndarray) -> np.ndarray:
    """S^(-1/2) of a symmetric positive semi-definite matrix, with near-zero eigenvalues floored."""
    values, vectors = np.linalg.eigh(_symmetric(s))
    floor = max(float(values.max(initial=0.0)) * _RELATIVE_FLOOR, np.finfo(np.float64).tiny)
    return (vectors / np.sqrt(np.maximum(values, floor))) @ vectors.T


def discriminant_transform(total: np.ndarray, within: np.ndarray, dims: int, shrinkage: float) -> np.ndarray:
    """The (dims, d) LDA projection T from the total and within-class scatter (both about their means).

    The within-class scatter is shrunk toward its mean eigenvalue (Ledoit-Wolf style,
    `shrinkage` x trace/d on the diagonal) because identities with two photos give it
    noisy small eigenvalues that plain whitening would blow up. Rows of T satisfy
    T Sw' T^T = I and T Sb T^T = diag(descending), Sb = total - within."""
    d = total.shape[0]
    if total.shape != (d, d) or within.shape != (d, d):
        raise ValueError(f"scatter matrices must be square and alike, got {total.shape} and {within.shape}")
    if not 1 <= dims <= d:
        raise ValueError(f"dims must be in [1, {d}], got {dims}")
    within = _symmetric(within.astype(np.float64))
    between = _symmetric(total.astype(np.float64)) - within
    shrunk = within + shrinkage * max(float(np.trace(within)), 0.0) / d * np.eye(d)
    whiten = inverse_sqrt(shrunk)
    values, vectors = np.linalg.eigh(_symmetric(whiten @ between @ whiten))
    top = np.argsort(values)[::-1][:dims]
    rows = (whiten @ vectors[:, top]).T
    # An eigenvector's sign is arbitrary (and cosines ignore it); fix it so that the same
    # statistics give the same model file on every machine.
    largest = np.abs(rows).argmax(axis=1)
    signs = np.sign(rows[np.arange(dims), largest])
    return rows * np.where(signs == 0, 1.0, signs)[:, None]


def fold_into_embedding(weights: Mapping[str, np.ndarray], transform: np.ndarray,
                        mean: np.ndarray) -> dict[str, np.ndarray]:
    """The weights with features := T (h - mean), h the projection's input (c features).

    The projection (d, c, 1, 1) becomes [T; 0], the BatchNorm subtracts [T; 0] mean and
    otherwise passes values through (variance 1, weight 1, bias 0). Discarded dimensions
    are constant zero, so the embedding keeps its width and cosines see only the kept
    ones. BatchNorm's eps makes it divide by sqrt(1 + eps): one factor for every
    dimension, which cosine similarity ignores."""
    projection = np.asarray(weights[EMBEDDING_PROJECTION])
    d, c = projection.shape[0], int(np.prod(projection.shape[1:]))
    if transform.shape[0] > d or transform.shape[1] != c or mean.shape != (c,):
        raise ValueError(f"a ({transform.shape}) transform and a {mean.shape} mean do not fit a ({d}, {c}) projection")
    full = np.zeros((d, c))
    full[: transform.shape[0]] = transform
    out = dict(weights)
    out[EMBEDDING_PROJECTION] = full.reshape(projection.shape).astype(projection.dtype)
    for name, value in ((EMBEDDING_BN_MEAN, full @ mean), (EMBEDDING_BN_VAR, np.ones(d)),
                        (EMBEDDING_BN_WEIGHT, np.ones(d)), (EMBEDDING_BN_BIAS, np.zeros(d))):
        out[name] = value.astype(np.asarray(weights[name]).dtype)
    return out
