"""Label encoding, metrics against scikit-learn, threshold tuning."""

import numpy as np
import pytest
from sklearn.metrics import f1_score

from bertml.labels import LabelError, LabelSet, count_labels, parse_cell
from bertml.metrics import evaluate, predict, tune_thresholds


def test_parse_cells_all_shapes():
    assert parse_cell(["b", "a", "b", " "], None) == ["b", "a"]
    assert parse_cell("体育|科技", "|") == ["体育", "科技"]
    assert parse_cell("sport", None) == ["sport"]
    assert parse_cell(None, None) == []
    with pytest.raises(LabelError):
        parse_cell(3, None)


def test_encode_unicode():
    cells = [["体育"], ["tech", "体育"], []]
    ls = LabelSet.from_counts(count_labels(cells, None), multi_label=True)
    y = ls.encode(cells, None)
    assert ls.names == ("tech", "体育") and y.tolist() == [[0, 1], [1, 1], [0, 0]]
    single = LabelSet(("a", "b"), multi_label=False)
    assert single.encode(["b", "a"], None).tolist() == [1, 0]
    with pytest.raises(LabelError, match="exactly one"):
        single.encode([["a", "b"]], None)
    with pytest.raises(LabelError, match="not in the label set"):
        ls.encode([["nope"]], None)


def test_metrics_agree_with_sklearn():
    rng = np.random.default_rng(0)
    y = (rng.random((200, 4)) < 0.3).astype(int)
    p = np.clip(y * 0.6 + rng.random((200, 4)) * 0.5, 0, 1)
    m = evaluate(p, y, ["a", "b", "c", "d"])
    pred = (p >= 0.5).astype(int)
    for avg in ("micro", "macro", "weighted", "samples"):
        assert m[f"{avg}_f1"] == pytest.approx(f1_score(y, pred, average=avg, zero_division=0))
    assert set(m["per_label"]["a"]) >= {"support", "precision", "recall", "f1", "roc_auc", "average_precision"}


def test_tuned_thresholds_beat_default_on_shifted_scores():
    rng = np.random.default_rng(1)
    y = (rng.random((400, 3)) < 0.4).astype(int)
    p = np.clip(0.1 + 0.25 * y + rng.random((400, 3)) * 0.2, 0, 1)  # positives ~0.35-0.55
    t, info = tune_thresholds(p, y)
    assert (t < 0.5).all() and not info["fallback_labels"]
    assert evaluate(p, y, list("abc"), t)["macro_f1"] > evaluate(p, y, list("abc"))["macro_f1"] + 0.2


def test_label_without_positives_uses_global_fallback():
    y = np.array([[1, 0], [0, 0], [1, 0]])
    p = np.array([[0.9, 0.1], [0.2, 0.3], [0.8, 0.2]])
    t, info = tune_thresholds(p, y)
    assert info["fallback_labels"] == [1] and t[1] == info["global_threshold"]


def test_target_precision_mode():
    y = np.array([1, 1, 0, 1, 0, 0])[:, None]
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.1])[:, None]
    t, _ = tune_thresholds(p, y, target_precision=1.0)
    assert t[0] == pytest.approx(0.8)


def test_single_label_uses_argmax():
    p = np.array([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    assert predict(p, None, multi_label=False).tolist() == [[0, 1, 0], [1, 0, 0]]
    m = evaluate(p, np.array([1, 2]), ["a", "b", "c"], multi_label=False)
    assert m["accuracy"] == 0.5
