"""Selection strategies: which unlabelled clips become pseudo-labelled training data, per class.

Every strategy sees the same `PoolView` (clip-level class probabilities from the current model, and
each clip's crawl text) and returns {clip index: class} for this iteration. A per-class cap keeps one
easy class from flooding the training set.

The Clarity Index (strategy `clarity`), precisely: for a clip with clip-level class probabilities p
(mean over its 2 s segments), sorted p(1) >= p(2) >= ...,

    CI = p(1) - p(2)                       (the margin between the top class and the runner-up)

and a clip is selected for its top class when  ci_low <= CI <= ci_high  (default 0.4 <= CI <= 0.95).
Why a margin and not p(1): a clip can have p(1) = 0.5 with the runner-up at 0.45 (two sounds at once,
or a class pair the model confuses — exactly the "clapping absorbs rain" drift of the original work)
— high enough for a threshold, but not clear. Why an upper bound: a clip recognised with CI ~ 1 is
one the model already gets right; it adds almost no gradient (its loss is ~0) while taking a slot of
the per-class cap, so it is skipped in favour of clearly-but-not-trivially recognised clips.

`clarity+semantic` additionally asks the clip's crawl text (the query that found it and its title)
to agree with the class: the class must be among the text's `semantic_top` nearest labels by MiniLM
similarity (query text vs class phrases), the acoustic + semantic selection of the open question.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass
class PoolView:
    probs: np.ndarray  # (n_clips, n_classes) clip-level probabilities under the current model
    text_sims: np.ndarray | None = None  # (n_clips, n_classes) crawl text vs class phrases (MiniLM)
    taken: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # already selected earlier


class Strategy(Protocol):
    name: str

    def select(self, view: PoolView, cap: int) -> dict[int, int]: ...


def _capped(candidates: np.ndarray, cls: np.ndarray, score: np.ndarray, n_classes: int, cap: int) -> dict[int, int]:
    """Keep the `cap` best-scoring candidates of each class."""
    out: dict[int, int] = {}
    for k in range(n_classes):
        idx = candidates[cls[candidates] == k]
        for i in idx[np.argsort(-score[idx])][:cap]:
            out[int(i)] = k
    return out


def _free(view: PoolView) -> np.ndarray:
    taken = view.taken if view.taken.size else np.zeros(len(view.probs), bool)
    return np.flatnonzero(~taken)


class Threshold:
    """(a) Top-class probability >= threshold."""

    def __init__(self, threshold: float = 0.7):
        self.threshold = threshold
        self.name = "threshold"

    def select(self, view: PoolView, cap: int) -> dict[int, int]:
        p = view.probs
        cls, top = p.argmax(1), p.max(1)
        free = _free(view)
        return _capped(free[top[free] >= self.threshold], cls, top, p.shape[1], cap)


class Calibrated:
    """(b) Per-class thresholds set so that precision on labelled validation data reaches `precision`.

    `fit(val_probs, val_labels)` must be called with out-of-sample probabilities (e.g. cross-validated
    predictions on the seed set). A class whose target precision is unreachable selects nothing.
    """

    def __init__(self, precision: float = 0.8, floor: float = 0.3):
        self.precision, self.floor = precision, floor
        self.thresholds: np.ndarray | None = None
        self.name = "calibrated"

    def fit(self, probs: np.ndarray, labels: np.ndarray) -> "Calibrated":
        n = probs.shape[1]
        th = np.full(n, np.inf)
        cls, top = probs.argmax(1), probs.max(1)
        for k in range(n):
            m = cls == k
            if not m.any():
                continue
            order = np.argsort(-top[m])
            correct = (labels[m] == k)[order]
            prec = np.cumsum(correct) / (np.arange(correct.size) + 1)
            ok = np.flatnonzero(prec >= self.precision)
            if ok.size:
                th[k] = max(self.floor, top[m][order][ok.max()])
        self.thresholds = th
        return self

    def select(self, view: PoolView, cap: int) -> dict[int, int]:
        p = view.probs
        cls, top = p.argmax(1), p.max(1)
        free = _free(view)
        return _capped(free[top[free] >= self.thresholds[cls[free]]], cls, top, p.shape[1], cap)


def clarity_index(probs: np.ndarray) -> np.ndarray:
    """CI = top probability minus the runner-up's (see module docstring)."""
    s = np.sort(probs, axis=1)
    return s[:, -1] - s[:, -2]


class Clarity:
    """(c) Clarity Index inside [low, high]."""

    def __init__(self, low: float = 0.4, high: float = 0.95):
        self.low, self.high = low, high
        self.name = "clarity"

    def mask(self, view: PoolView) -> np.ndarray:
        ci = clarity_index(view.probs)
        return (ci >= self.low) & (ci <= self.high)

    def select(self, view: PoolView, cap: int) -> dict[int, int]:
        p = view.probs
        cls, ci = p.argmax(1), clarity_index(p)
        free = _free(view)
        return _capped(free[self.mask(view)[free]], cls, ci, p.shape[1], cap)


class ClaritySemantic(Clarity):
    """(d) Clarity Index, and the crawl text agrees: the class is among the text's `top` nearest labels."""

    def __init__(self, low: float = 0.4, high: float = 0.95, top: int = 3):
        super().__init__(low, high)
        self.top = top
        self.name = "clarity+semantic"

    def select(self, view: PoolView, cap: int) -> dict[int, int]:
        if view.text_sims is None:
            raise ValueError("clarity+semantic needs the pool's crawl text")
        p = view.probs
        cls, ci = p.argmax(1), clarity_index(p)
        rank = (-view.text_sims).argsort(1).argsort(1)  # rank of each class for each clip's text
        agrees = rank[np.arange(len(p)), cls] < self.top
        free = _free(view)
        ok = free[self.mask(view)[free] & agrees[free]]
        return _capped(ok, cls, ci, p.shape[1], cap)


class QueryLabel:
    """Reference, not a NELS strategy: label every clip with its crawl query's nearest class (no audio)."""

    name = "query-only"

    def select(self, view: PoolView, cap: int) -> dict[int, int]:
        cls = view.text_sims.argmax(1)
        free = _free(view)
        return _capped(free, cls, view.text_sims.max(1), view.text_sims.shape[1], cap)


def strategies(calibration: tuple[np.ndarray, np.ndarray] | None = None) -> list:
    """The four NELS strategies (calibrated needs (probs, labels) of out-of-sample validation data)."""
    cal = Calibrated()
    if calibration is not None:
        cal.fit(*calibration)
    return [Threshold(), cal, Clarity(), ClaritySemantic()]
