"""Face verification metrics. Everything but `plot_roc` is a pure numpy
function of scores and labels, so it can be checked against hand-computed
values. Convention: a pair is accepted as the same person when score >= threshold."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_FARS = (1e-2, 1e-3, 1e-4)


def best_threshold(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """(threshold, accuracy) maximising accuracy on these pairs. Candidate
    cuts lie between distinct sorted scores (midpoints), so ties are never split."""
    scores = np.asarray(scores, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    n = len(scores)
    if n == 0:
        raise ValueError("no pairs")
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], same[order]
    # Accepting the top k pairs, k = 0..n.
    tp = np.concatenate([[0], np.cumsum(y)])
    fp = np.concatenate([[0], np.cumsum(~y)])
    acc = (tp + ((~y).sum() - fp)) / n
    valid = np.ones(n + 1, dtype=bool)
    valid[1:n] = s[:-1] > s[1:]
    k = int(np.flatnonzero(valid)[np.argmax(acc[valid])])
    if k == 0:
        threshold = float(np.nextafter(s[0], np.inf))
    elif k == n:
        threshold = float(s[-1])
    else:
        threshold = float((s[k - 1] + s[k]) / 2)
    return threshold, float(acc[k])


def kfold_accuracy(scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> dict[str, Any]:
    """LFW protocol: for each fold, pick the threshold on the other folds and
    measure accuracy on this one; report the mean and std over folds."""
    scores = np.asarray(scores, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    folds = np.asarray(folds)
    accs, thresholds = [], []
    for f in np.unique(folds):
        test = folds == f
        if test.all():
            raise ValueError("k-fold accuracy needs at least two folds")
        t, _ = best_threshold(scores[~test], same[~test])
        accs.append(float(((scores[test] >= t) == same[test]).mean()))
        thresholds.append(t)
    return {"accuracy": float(np.mean(accs)), "std": float(np.std(accs)), "fold_accuracies": accs,
            "thresholds": thresholds}


def roc_curve(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(far, tar, thresholds), one point per distinct score, from (0, 0) at
    threshold +inf to (1, 1). Sort-based: O(n log n) for millions of pairs."""
    scores = np.asarray(scores, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    pos, neg = int(same.sum()), int((~same).sum())
    if pos == 0 or neg == 0:
        raise ValueError("need both genuine and impostor pairs")
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], same[order]
    last_of_run = np.r_[s[:-1] > s[1:], True]  # accept everything >= s[i] at once
    tp = np.cumsum(y)[last_of_run]
    fp = np.cumsum(~y)[last_of_run]
    tar = np.r_[0.0, tp / pos]
    far = np.r_[0.0, fp / neg]
    return far, tar, np.r_[np.inf, s[last_of_run]]


def tar_at_far(far: np.ndarray, tar: np.ndarray, target: float) -> float:
    """Highest TAR over thresholds whose FAR does not exceed `target`."""
    ok = far <= target
    return float(tar[ok].max()) if ok.any() else 0.0


def roc_auc(far: np.ndarray, tar: np.ndarray) -> float:
    """Area under the ROC by trapezoids; with ties as diagonal segments this
    equals P(genuine > impostor) + P(equal) / 2."""
    return float(np.sum(np.diff(far) * (tar[1:] + tar[:-1]) / 2))


def pair_scores(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of row-aligned L2-normalised embeddings."""
    return np.einsum("ij,ij->i", np.asarray(a, np.float64), np.asarray(b, np.float64))


def all_pairs(embeddings: np.ndarray, identities: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(scores, same) over the upper triangle of the similarity matrix, i < j."""
    emb = np.asarray(embeddings, dtype=np.float32)
    if len(emb) != len(identities):
        raise ValueError("one identity per embedding")
    _, codes = np.unique(np.asarray(identities), return_inverse=True)
    i, j = np.triu_indices(len(emb), k=1)
    sims = emb @ emb.T
    return sims[i, j], codes[i] == codes[j]


@dataclass
class AllPairsResult:
    metrics: dict[str, float]
    far: np.ndarray
    tar: np.ndarray


def all_pairs_verification(
    embeddings: np.ndarray, identities: Sequence[str], fars: Sequence[float] = DEFAULT_FARS
) -> AllPairsResult:
    scores, same = all_pairs(embeddings, identities)
    far, tar, _ = roc_curve(scores, same)
    metrics = {f"tar@far={f:g}": tar_at_far(far, tar, f) for f in fars}
    metrics["auc"] = roc_auc(far, tar)
    metrics["genuine_pairs"] = float(same.sum())
    metrics["impostor_pairs"] = float((~same).sum())
    return AllPairsResult(metrics, far, tar)


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str = "ROC") -> Path:
    """TAR against FAR (log scale) for each named curve, written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    for name, (far, tar) in curves.items():
        # Millions of points add nothing at this resolution: keep ~2000 log-spaced ones.
        keep = np.unique(np.searchsorted(far, np.logspace(-6, 0, 2000)).clip(0, len(far) - 1))
        ax.plot(np.maximum(far[keep], 1e-6), tar[keep], label=name)
    ax.set_xscale("log")
    ax.set_xlim(1e-5, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("FAR")
    ax.set_ylabel("TAR")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
