"""Retrieval metrics over ranked lists (plain functions; relevance is a boolean per rank)."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def average_precision(relevant: Sequence[bool], n_relevant: int | None = None) -> float:
    """AP of one ranking: mean of precision@k at each relevant rank, over all `n_relevant` relevant items
    (items the ranking never returned count as misses). 0 when nothing is relevant."""
    rel = np.asarray(relevant, dtype=bool)
    total = int(rel.sum()) if n_relevant is None else int(n_relevant)
    if total == 0:
        return 0.0
    hits = np.cumsum(rel)
    ranks = np.flatnonzero(rel) + 1
    return float(np.sum(hits[rel] / ranks) / total)


def average_precision_at(relevant: Sequence[bool], k: int, n_relevant: int) -> float:
    """AP@k as in MAP@k: precision at each relevant rank within the top k, over min(k, n_relevant)."""
    rel = np.asarray(relevant, dtype=bool)[:k]
    denom = min(k, int(n_relevant))
    if denom == 0:
        return 0.0
    hits = np.cumsum(rel)
    ranks = np.flatnonzero(rel) + 1
    return float(np.sum(hits[rel] / ranks) / denom)


def precision_at(relevant: Sequence[bool], k: int) -> float:
    rel = np.asarray(relevant, dtype=bool)[:k]
    return float(rel.sum() / k)


def class_average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """AP of one class (binary y_true), the area under the precision-recall curve as sklearn computes it."""
    order = np.argsort(-scores, kind="mergesort")
    y = np.asarray(y_true)[order]
    n_pos = y.sum()
    if n_pos == 0:
        return float("nan")
    hits = np.cumsum(y)
    prec = hits / np.arange(1, len(y) + 1)
    return float((prec * y).sum() / n_pos)


def classification_metrics(y: np.ndarray, probs: np.ndarray, n_classes: int) -> dict:
    y = np.asarray(y)
    pred = probs.argmax(1)
    aps = []
    for c in range(n_classes):
        aps.append(class_average_precision((y == c).astype(np.float64), probs[:, c]))
    ap_arr = np.array(aps, dtype=np.float64)
    conf = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(conf, (y, pred), 1)
    return {"accuracy": float((pred == y).mean()), "mAP": float(np.nanmean(ap_arr)) if np.isfinite(ap_arr).any() else float("nan"),
            "per_class_ap": [None if not np.isfinite(a) else round(float(a), 4) for a in ap_arr],
            "confusion": conf.tolist(), "n_clips": int(len(y))}
