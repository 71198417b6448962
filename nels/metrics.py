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
