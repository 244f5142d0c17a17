"""Collapse monitor: how close a set of unit vectors sits to one point."""

from __future__ import annotations

import numpy as np


def normalise_rows(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def mean_offdiagonal_cosine(vectors: np.ndarray) -> float | None:
    """Mean cosine over ordered pairs i != j; 1.0 means total collapse. Computed
    from the sum vector, so it is O(n d) rather than O(n^2 d)."""
    n = len(vectors)
    if n < 2:
        return None
    u = normalise_rows(vectors)
    s = u.sum(axis=0)
    total = float(s @ s) - float((u * u).sum())
    return total / (n * (n - 1))
