"""Ranking metrics shared by the analyses and `creformer validate` (hand-checkable, no magic)."""

from __future__ import annotations

import numpy as np


def _sorted_labels(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in shape")
    order = np.argsort(-scores, kind="stable")
    return scores[order], labels[order]


def precision_recall(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall at each distinct score threshold (ties enter together), highest first."""
    s, y = _sorted_labels(scores, labels)
    if y.sum() == 0:
        raise ValueError("no positive labels: precision/recall are undefined")
    tp = np.cumsum(y)
    # keep the last index of each run of equal scores so tied items are admitted together
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    tp = tp[last]
    n = last + 1
    return tp / n, tp / y.sum()


def auprc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision: sum over thresholds of precision x (recall gained), as scikit-learn."""
    precision, recall = precision_recall(scores, labels)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def pr_curve(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) at each distinct score threshold, highest first (ties enter together),
    each pair counted with its weight (1 by default)."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels, bool)
    w = np.ones(s.size) if weights is None else np.asarray(weights, np.float64)
    if not (s.shape == y.shape == w.shape):
        raise ValueError(f"scores {s.shape}, labels {y.shape} and weights {w.shape} differ in shape")
    order = np.argsort(-s, kind="stable")
    s, y, w = s[order], y[order], w[order]
    positives = float((w * y).sum())
    if positives <= 0:
        raise ValueError("no positive labels (with positive weight): precision/recall are undefined")
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    tp = np.cumsum(w * y)[last]
    fp = np.cumsum(w * ~y)[last]
    return tp / positives, tp / (tp + fp)


def auprc_trapezoid(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float:
    """AUPRC as EngreitzLab's CRISPR_comparison computes it (ROCR's precision-recall points, the
    trapezoid rule): the points at every distinct threshold sorted by recall (ties by falling
    precision), without ROCR's first point (recall 0, undefined precision) and without the last
    one, the recall-1 point every predictor reaches by calling every pair."""
    recall, precision = pr_curve(scores, labels, weights)
    order = np.lexsort((-precision, recall))
    r, p = recall[order][:-1], precision[order][:-1]
    return float(np.trapezoid(p, r)) if r.size > 1 else 0.0


def precision_at_recall(scores: np.ndarray, labels: np.ndarray, recall: float = 0.7) -> float:
    """Precision at the first threshold whose recall reaches ``recall``."""
    p, r = precision_recall(scores, labels)
    return float(p[np.argmax(r >= recall - 1e-12)])


def top_k_precision(ranked: list[str], truth: set[str], k: int = 3) -> float:
    """Hits among the top k over the most hits possible (min(k, |truth|)): with 2 true master TFs
    and k = 3, finding both scores 1.0."""
    if not truth:
        raise ValueError("empty truth set")
    return len(set(ranked[:k]) & truth) / min(k, len(truth))


def r_precision(ranked: list[str], truth: set[str]) -> float:
    """Hits among the top |truth| over |truth|: the top-k precision at k = the number of true items,
    so no slot is left over for a decoy (a type-specific non-master TF) to sit in unpunished."""
    return top_k_precision(ranked, truth, len(truth))
