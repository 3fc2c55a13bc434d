"""One label (a binary tagger): metrics keep their multi-label meaning on an [N, 1] matrix."""

import numpy as np
import pytest
from sklearn import metrics as skm

from bertml.metrics import evaluate, global_threshold, tune_thresholds


@pytest.fixture
def binary():
    rng = np.random.default_rng(3)
    y = (rng.random((200, 1)) < 0.3).astype(np.int64)  # [N, 1], 30% positives
    probs = np.clip(0.35 * y + 0.65 * rng.random((200, 1)), 0, 1)  # [N, 1], overlapping classes
    return probs, y


def test_one_label_metrics_are_that_labels_binary_metrics(binary):
    probs, y = binary
    m = evaluate(probs, y, ["spam"], np.array([0.5]), multi_label=True)
    pred = probs[:, 0] >= 0.5
    f1 = skm.f1_score(y[:, 0], pred)
    assert 0.2 < f1 < 0.95  # neither trivial nor perfect, so a wrong average would show
    for avg in ("micro", "macro", "weighted"):
        assert m[f"{avg}_f1"] == pytest.approx(f1)
        assert m[f"{avg}_precision"] == pytest.approx(skm.precision_score(y[:, 0], pred))
        assert m[f"{avg}_recall"] == pytest.approx(skm.recall_score(y[:, 0], pred))
    # samples average: as for any label set, a row without labels and predictions scores 0
    assert m["samples_f1"] == pytest.approx(np.mean(pred & (y[:, 0] == 1)))
    assert m["subset_accuracy"] == pytest.approx(skm.accuracy_score(y[:, 0], pred))
    assert m["hamming_loss"] == pytest.approx(1 - skm.accuracy_score(y[:, 0], pred))
    row = m["per_label"]["spam"]
    assert row["support"] == int(y.sum()) and row["f1"] == pytest.approx(f1)
    assert row["roc_auc"] == pytest.approx(skm.roc_auc_score(y[:, 0], probs[:, 0]))


def test_one_label_equals_the_same_label_inside_a_bigger_set(binary):
    probs, y = binary
    rng = np.random.default_rng(4)
    y2 = np.hstack([y, rng.random((200, 1)) < 0.5]).astype(np.int64)
    p2 = np.hstack([probs, rng.random((200, 1))])
    one = evaluate(probs, y, ["spam"], np.array([0.4]), True)["per_label"]["spam"]
    two = evaluate(p2, y2, ["spam", "other"], np.array([0.4, 0.5]), True)["per_label"]["spam"]
    assert one == two


def test_one_label_thresholds_maximise_its_f1(binary):
    probs, y = binary
    t, info = tune_thresholds(probs, y)
    best = max(skm.f1_score(y[:, 0], probs[:, 0] >= c) for c in probs[:, 0])
    assert t.shape == (1,) and info["fallback_labels"] == []
    assert skm.f1_score(y[:, 0], probs[:, 0] >= t[0]) == pytest.approx(best)
    grid = np.round(np.arange(0.05, 0.96, 0.05), 2)  # the fallback: micro-F1 of the positive label
    want = grid[int(np.argmax([skm.f1_score(y[:, 0], probs[:, 0] >= g) for g in grid]))]
    assert global_threshold(probs, y) == pytest.approx(want)
