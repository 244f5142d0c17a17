from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fedface_lab.verification import (
    all_pairs,
    all_pairs_verification,
    best_threshold,
    kfold_accuracy,
    roc_auc,
    roc_curve,
    tar_at_far,
)


def test_best_threshold_by_hand() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    same = np.array([True, True, False, True, False, False])
    # Accepting the top 2 or the top 4 both get 5/6 right; the higher cut wins ties.
    t, acc = best_threshold(scores, same)
    assert acc == 5 / 6
    assert t == (0.8 + 0.7) / 2


def test_best_threshold_never_splits_tied_scores() -> None:
    t, acc = best_threshold(np.array([0.5, 0.5, 0.1]), np.array([True, False, False]))
    assert acc == 2 / 3 and t in (0.3, np.nextafter(0.5, 1))


def test_kfold_accuracy_by_hand() -> None:
    scores = np.array([0.9, 0.8, 0.3, 0.2, 0.6, 0.5, 0.45, 0.1])
    same = np.array([1, 1, 0, 0, 1, 0, 1, 0], dtype=bool)
    folds = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    # Fold 1's best cut is 0.55 (3/4 there) and gets fold 0 all right; fold 0's
    # best cut is (0.8+0.3)/2 = 0.55, which gets 3/4 of fold 1 right.
    r = kfold_accuracy(scores, same, folds)
    assert r["fold_accuracies"] == [1.0, 0.75]
    assert r["accuracy"] == 0.875
    np.testing.assert_allclose(r["thresholds"], [0.55, 0.55])


def test_tar_at_far_by_hand() -> None:
    genuine = [0.9, 0.7, 0.4]
    impostor = [0.8, 0.6, 0.5, 0.3, 0.2, 0.1, 0.0, -0.1, -0.2, -0.3]
    scores = np.array(genuine + impostor)
    same = np.array([True] * 3 + [False] * 10)
    far, tar, _ = roc_curve(scores, same)
    assert tar_at_far(far, tar, 0.05) == 1 / 3  # no impostor accepted: only 0.9
    assert tar_at_far(far, tar, 0.1) == 2 / 3  # one impostor (0.8) allowed: down to 0.7
    assert tar_at_far(far, tar, 0.3) == 1.0  # three allowed: down to 0.4
    # 0.9 beats all 10 impostors, 0.7 beats 9, 0.4 beats 7.
    assert roc_auc(far, tar) == (10 + 9 + 7) / 30


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(-5, 5), min_size=1, max_size=30),
    st.lists(st.integers(-5, 5), min_size=1, max_size=30),
)
def test_auc_matches_brute_force(genuine: list[int], impostor: list[int]) -> None:
    g, i = np.array(genuine, float), np.array(impostor, float)
    brute = ((g[:, None] > i[None, :]) + 0.5 * (g[:, None] == i[None, :])).mean()
    far, tar, thr = roc_curve(np.r_[g, i], np.r_[np.ones(len(g), bool), np.zeros(len(i), bool)])
    assert abs(roc_auc(far, tar) - brute) < 1e-12
    assert far[0] == tar[0] == 0 and far[-1] == tar[-1] == 1
    assert np.all(np.diff(thr) < 0)


def test_all_pairs_upper_triangle() -> None:
    emb = np.eye(4, dtype=np.float32)
    emb[1] = emb[0]
    scores, same = all_pairs(emb, ["a", "a", "b", "c"])
    assert len(scores) == 6 and same.sum() == 1
    assert scores[same][0] == 1.0 and np.all(scores[~same] == 0.0)
    m = all_pairs_verification(emb, ["a", "a", "b", "c"]).metrics
    assert m["genuine_pairs"] == 1 and m["impostor_pairs"] == 5 and m["auc"] == 1.0
