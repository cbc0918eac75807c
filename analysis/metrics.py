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
