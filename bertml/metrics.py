"""Metrics from probabilities (scikit-learn) and per-label threshold tuning.

probs:   [N, L] float, sigmoid (multi-label) or softmax (single-label) outputs
targets: [N, L] 0/1 multi-hot (multi-label) or [N] class ids (single-label)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn import metrics as skm

from bertml.labels import to_multi_hot

DEFAULT_THRESHOLD = 0.5


@dataclass
class Scored:
    """Scored rows with text, their true labels, and what was left out: what `bertml evaluate`
    and `bertml thresholds` compute from (bertml.evaluate builds it, bertml.report draws it)."""

    probs: np.ndarray  # [n, L] float32
    targets: np.ndarray  # [n, L] multi-hot (multi-label) or [n] class ids (single-label)
    keys: list[str]  # id (or shard:row) per row, for examples in the report
    labels: list[str]  # checkpoint label order
    multi_label: bool
    rows: int  # all input rows
    empty: int  # rows without text: no probabilities, excluded
    unknown: dict[str, int]  # labels in the data the checkpoint doesn't know (unknown_labels=ignore)
    unknown_rows: int  # single-label rows excluded because their label is unknown
    status: dict[str, int]
    checkpoint: str
    fingerprint: str
    thresholds: np.ndarray | None  # the checkpoint's, multi-label only
    checkpoint_metrics: dict
    coverage: dict | None = None  # [UNK] figures of a sample of the data (bertml.coverage)


def predict(probs: np.ndarray, thresholds: np.ndarray | float | None, multi_label: bool) -> np.ndarray:
    """[N, L] 0/1 predictions: probs >= threshold per label, or argmax (single-label)."""
    probs = np.asarray(probs)
    if not multi_label:
        return to_multi_hot(probs.argmax(axis=1), probs.shape[1])
    t = DEFAULT_THRESHOLD if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    return (probs >= t).astype(np.int64)


def _prfs(y: np.ndarray, pred: np.ndarray, average: str | None):
    """sklearn's precision_recall_fscore_support over the label columns of [N, L] 0/1 matrices.

    sklearn reads a one-column matrix as a binary target (micro = accuracy, per-class rows
    for 0 and 1, no samples average); an all-zero column that `labels` leaves out keeps a
    binary tagger ([N, 1]) multi-label, with the same numbers as any other label set.
    """
    labels = np.arange(y.shape[1])
    if y.shape[1] == 1:
        y, pred = np.pad(y, ((0, 0), (0, 1))), np.pad(pred, ((0, 0), (0, 1)))
    return skm.precision_recall_fscore_support(y, pred, average=average, labels=labels, zero_division=0)


def evaluate(
    probs: np.ndarray,
    targets: np.ndarray,
    label_names: list[str] | tuple[str, ...],
    thresholds: np.ndarray | float | None = None,
    multi_label: bool = True,
) -> dict:
    """All metrics from sklearn: averages, per-label table, ROC-AUC/AP where defined."""
    probs = np.asarray(probs, dtype=np.float64)
    y = to_multi_hot(targets, probs.shape[1])
    pred = predict(probs, thresholds, multi_label)
    out: dict = {"n": int(len(y))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined precision/recall -> 0 (zero_division)
        for avg in ("micro", "macro", "weighted", "samples"):
            if avg == "samples" and not multi_label:
                continue
            p, r, f, _ = _prfs(y, pred, avg)
            out[f"{avg}_precision"], out[f"{avg}_recall"], out[f"{avg}_f1"] = float(p), float(r), float(f)
        out["subset_accuracy"] = float(skm.accuracy_score(y, pred))
        out["hamming_loss"] = float(skm.hamming_loss(y, pred))
        if not multi_label:
            out["accuracy"] = float(skm.accuracy_score(y.argmax(1), probs.argmax(1)))
        p, r, f, s = _prfs(y, pred, None)
    per_label = {}
    aucs, aps = [], []
    for j, name in enumerate(label_names):
        row = {"support": int(s[j]), "precision": float(p[j]), "recall": float(r[j]), "f1": float(f[j])}
        if 0 < y[:, j].sum() < len(y):
            row["roc_auc"] = float(skm.roc_auc_score(y[:, j], probs[:, j]))
            row["average_precision"] = float(skm.average_precision_score(y[:, j], probs[:, j]))
            aucs.append(row["roc_auc"])
            aps.append(row["average_precision"])
        if thresholds is not None and multi_label:
            row["threshold"] = float(np.broadcast_to(thresholds, (len(label_names),))[j])
        per_label[name] = row
    if aucs:
        out["macro_roc_auc"] = float(np.mean(aucs))
        out["macro_average_precision"] = float(np.mean(aps))
    if y.sum() and (y == 0).sum() and multi_label:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out["micro_roc_auc"] = float(skm.roc_auc_score(y.ravel(), probs.ravel()))
            out["micro_average_precision"] = float(skm.average_precision_score(y.ravel(), probs.ravel()))
    out["per_label"] = per_label
    return out


def _best_f1_threshold(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximising F1 of `p >= threshold` for one label with positives."""
    precision, recall, thr = skm.precision_recall_curve(y, p)
    precision, recall = precision[:-1], recall[:-1]  # align with thr
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    i = int(np.argmax(f1))
    t = float(thr[i])
    # Midway to the next lower score generalises better than sitting exactly on a sample.
    lower = p[p < t]
    if lower.size:
        t = (t + float(lower.max())) / 2
    return t, float(f1[i])


def _precision_threshold(y: np.ndarray, p: np.ndarray, target: float) -> float | None:
    """Lowest threshold whose precision >= target (most recall), or None if unreachable."""
    precision, _, thr = skm.precision_recall_curve(y, p)
    ok = np.flatnonzero(precision[:-1] >= target)
    return float(thr[ok[0]]) if ok.size else None


def global_threshold(probs: np.ndarray, y: np.ndarray) -> float:
    """One threshold maximising micro-F1 over all labels (fallback for labels without positives)."""
    grid = np.round(np.arange(0.05, 0.96, 0.05), 2)
    scores = [_prfs(y, (probs >= t).astype(np.int64), "micro")[2] for t in grid]
    return float(grid[int(np.argmax(scores))]) if max(scores) > 0 else DEFAULT_THRESHOLD


def tune_thresholds(
    probs: np.ndarray,
    targets: np.ndarray,
    target_precision: float | None = None,
) -> tuple[np.ndarray, dict]:
    """Per-label thresholds from validation probabilities.

    Default: each label's threshold maximises that label's F1. With `target_precision`,
    the lowest threshold reaching that precision (falling back to max-F1 where it cannot).
    Labels without positives (or without negatives) get the global micro-F1 threshold.
    Returns (thresholds [L], info) where info names the labels that used a fallback.
    """
    probs = np.asarray(probs, dtype=np.float64)
    y = to_multi_hot(targets, probs.shape[1])
    fallback = global_threshold(probs, y)
    out = np.full(probs.shape[1], fallback, dtype=np.float64)
    info: dict = {"global_threshold": fallback, "fallback_labels": [], "precision_unreached": []}
    for j in range(probs.shape[1]):
        yj, pj = y[:, j], probs[:, j]
        if yj.sum() == 0 or yj.sum() == len(yj):
            info["fallback_labels"].append(j)
            continue
        t = None
        if target_precision is not None:
            t = _precision_threshold(yj, pj, target_precision)
            if t is None:
                info["precision_unreached"].append(j)
        out[j] = t if t is not None else _best_f1_threshold(yj, pj)[0]
    return np.clip(out, 0.0, 1.0), info


# ----------------------------------------------------------------------------- curves (reports)


def pr_curve(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision [T], recall [T], thresholds [T]) of `p >= threshold` for one label, thresholds ascending."""
    precision, recall, thr = skm.precision_recall_curve(y, p)
    return precision[:-1], recall[:-1], thr  # drop sklearn's (1, 0) end point: it has no threshold


def point_at(y: np.ndarray, p: np.ndarray, threshold: float) -> tuple[float, float, float]:
    """(precision, recall, F1) of `p >= threshold` for one label."""
    pred = np.asarray(p) >= threshold
    y = np.asarray(y) > 0.5
    tp = float((pred & y).sum())
    precision = tp / pred.sum() if pred.sum() else 0.0
    recall = tp / y.sum() if y.sum() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def f1_by_threshold(y: np.ndarray, p: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """F1 [T] of `p >= t` for every t in `grid`, one label (0 where undefined)."""
    y = np.asarray(y) > 0.5  # [N]
    pred = np.asarray(p)[:, None] >= np.asarray(grid)[None, :]  # [N, T]
    tp = (pred & y[:, None]).sum(0)
    denom = pred.sum(0) + y.sum()
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def cooccurrence(y: np.ndarray) -> np.ndarray:
    """[L, L] documents carrying both labels i and j (diagonal: support) from multi-hot [N, L]."""
    y = (np.asarray(y) > 0.5).astype(np.int64)
    return y.T @ y


def confusion(targets: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Single-label [L, L] counts: row = true class, column = argmax prediction."""
    probs = np.asarray(probs)
    return skm.confusion_matrix(np.asarray(targets), probs.argmax(1), labels=np.arange(probs.shape[1]))
