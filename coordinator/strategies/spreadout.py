"""The spreadout regulariser of FedAwS (Yu et al., ICML 2020) as FedFace uses it.

R(W) = mean over ordered pairs i != j of max(0, u_i . u_j - tau)^2, with u the
L2-normalised rows of W. The gradient is derived by hand (checked against
finite differences in the tests) so the server needs no autograd framework:

    dR/dU = (4 / (n (n-1))) M U,   M_ij = max(0, u_i . u_j - tau), M_ii = 0
    dR/dw_i = (I - u_i u_i^T) dR/du_i / |w_i|
"""

from __future__ import annotations

import numpy as np


def _masked_margins(u: np.ndarray, tau: float, knn: int | None) -> np.ndarray:
    gram = u @ u.T
    np.fill_diagonal(gram, -np.inf)
    m = np.maximum(gram - tau, 0.0)
    if knn is not None and knn < len(u) - 1:
        # Only each row's k most similar rows: the pairs that matter at scale.
        keep = np.zeros_like(m, dtype=bool)
        idx = np.argpartition(-gram, knn, axis=1)[:, :knn]
        np.put_along_axis(keep, idx, True, axis=1)
        keep |= keep.T  # keep the penalty symmetric
        m = np.where(keep, m, 0.0)
    np.fill_diagonal(m, 0.0)
    return m


def spreadout_loss(w: np.ndarray, tau: float, knn: int | None = None) -> float:
    n = len(w)
    if n < 2:
        return 0.0
    u = w / np.linalg.norm(w, axis=1, keepdims=True)
    m = _masked_margins(u, tau, knn)
    return float((m**2).sum() / (n * (n - 1)))


def spreadout_grad(w: np.ndarray, tau: float, knn: int | None = None) -> np.ndarray:
    n = len(w)
    if n < 2:
        return np.zeros_like(w)
    norms = np.linalg.norm(w, axis=1, keepdims=True)
    u = w / norms
    m = _masked_margins(u, tau, knn)
    grad_u = (4.0 / (n * (n - 1))) * (m @ u)
    radial = (grad_u * u).sum(axis=1, keepdims=True) * u
    return (grad_u - radial) / norms


def spreadout_steps(
    w: np.ndarray, tau: float, steps: int, lr: float, momentum: float, knn: int | None = None
) -> np.ndarray:
    """`steps` SGD steps with momentum (PyTorch convention: v = mu v + g; w -= lr v)."""
    w = np.asarray(w, dtype=np.float64).copy()
    v = np.zeros_like(w)
    for _ in range(steps):
        g = spreadout_grad(w, tau, knn)
        v = momentum * v + g
        w -= lr * v
    return w
