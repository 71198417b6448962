"""One learning run: seed head -> (classify pool, select, re-train, evaluate) x N, recorded per iteration.

Works on segment embeddings (the CNN's penultimate layer, before L2 normalisation): the classifier
head re-trained here has exactly the shape of the CNN's own output layer, so a run's result is a new
model version (`heads.save_with_head`) that `nels reindex` applies to a library.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from nels.learn.select import PoolView
from nels.metrics import average_precision


@dataclass
class Split:
    """Segments of some clips: X (n_seg, d), clip (n_seg,) clip index, y per clip (n_clips,), -1 unknown."""

    X: np.ndarray
    clip: np.ndarray
    y: np.ndarray

    @property
    def n_clips(self) -> int:
        return len(self.y)

    def segments_of(self, clips) -> np.ndarray:
        return np.flatnonzero(np.isin(self.clip, np.asarray(list(clips), dtype=int)))


@dataclass
class LoopData:
    labels: list[str]
    seed: Split
    pool: Split  # pool.y: the hidden truth when known (experiments), else -1
    test: Split
    pool_text_sims: np.ndarray | None = None  # (pool clips, classes)
    pool_ids: list = field(default_factory=list)  # what each pool clip is (for reports)


def train_head(X: np.ndarray, y: np.ndarray, n_classes: int, w: np.ndarray | None = None, steps: int = 300,
               lr: float = 0.02, weight_decay: float = 1e-3, seed: int = 0,
               init: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Softmax regression on embeddings: full-batch Adam in numpy, classes balanced by inverse frequency.

    X (n, d), y (n,) class ids, w (n,) sample weights (pseudo-labels may count less).
    Returns (W (C, d), b (C,)): the shape of the CNN's output layer. numpy, not torch: the problem is
    tiny, and torch's thread pool costs more than the arithmetic (10x slower on 2 busy cores).
    init: (W, b) to start from (fine-tuning the serving model's head) instead of a random W and zero b.
    """
    rng = np.random.default_rng(seed)
    X = np.asarray(X, np.float64)
    n, d = X.shape
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    cw = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / n_classes, 0.0)
    sw = (np.ones(n) if w is None else np.asarray(w, np.float64)) * cw[y]
    sw /= sw.sum()
    Y = np.eye(n_classes)[y]
    W = rng.normal(0, 1 / np.sqrt(d), (n_classes, d))
    b = np.zeros(n_classes)
    if init is not None:
        W, b = np.array(init[0], np.float64), np.array(init[1], np.float64)
    m = [np.zeros_like(W), np.zeros_like(b)]
    v = [np.zeros_like(W), np.zeros_like(b)]
    for t in range(1, steps + 1):
        z = X @ W.T + b
        z -= z.max(1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(1, keepdims=True)
        g = (p - Y) * sw[:, None]
        grads = [g.T @ X + weight_decay * W, g.sum(0)]
        for i, (param, grad) in enumerate(zip((W, b), grads)):
            m[i] = 0.9 * m[i] + 0.1 * grad
            v[i] = 0.999 * v[i] + 0.001 * grad ** 2
            param -= lr * (m[i] / (1 - 0.9 ** t)) / (np.sqrt(v[i] / (1 - 0.999 ** t)) + 1e-8)
    return W.astype(np.float32), b.astype(np.float32)


def clip_probs(head, split: Split) -> np.ndarray:
    """Clip-level probabilities: mean over each clip's segments of the head's softmax."""
    W, b = head
    z = split.X @ W.T + b
    z -= z.max(1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(1, keepdims=True)
    out = np.zeros((split.n_clips, W.shape[0]), np.float32)
    np.add.at(out, split.clip, p)
    n = np.bincount(split.clip, minlength=split.n_clips)[:, None]
    return out / np.maximum(n, 1)


def evaluate(head, test: Split, n_classes: int) -> dict:
    p = clip_probs(head, test)
    per = []
    for k in range(n_classes):
        rel = (test.y == k)[np.argsort(-p[:, k])]
        per.append(average_precision(rel, int((test.y == k).sum())) if (test.y == k).any() else float("nan"))
    per = np.asarray(per)
    return {"map": float(np.nanmean(per)), "per_class": per, "accuracy": float((p.argmax(1) == test.y).mean())}


def training_set(data: LoopData, selected: dict[int, int], pseudo_weight: float):
    s = data.seed
    X = [s.X]
    y = [s.y[s.clip]]
    w = [np.ones(len(s.clip))]
    if selected:
        clips = np.fromiter(selected.keys(), int)
        seg = data.pool.segments_of(clips)
        X.append(data.pool.X[seg])
        y.append(np.array([selected[int(c)] for c in data.pool.clip[seg]]))
        w.append(np.full(len(seg), pseudo_weight))
    return np.concatenate(X), np.concatenate(y), np.concatenate(w)


def fit_head(data: LoopData, selected: dict[int, int], pseudo_weight: float, seed: int, init=None,
             steps: int = 300, lr: float = 0.02):
    X, y, w = training_set(data, selected, pseudo_weight)
    return train_head(X, y, len(data.labels), w, steps=steps, lr=lr, seed=seed, init=init)


def run(data: LoopData, strategy, iterations: int = 5, cap: int = 5, patience: int = 2, pseudo_weight: float = 1.0,
        seed: int = 0, done: list[dict] | None = None, record: Callable[[dict], None] | None = None,
        init: tuple[np.ndarray, np.ndarray] | None = None, steps: int = 300, lr: float = 0.02) -> list[dict]:
    """Run (or resume) the loop. `done`: iterations already recorded (their selections are replayed).
    `init`, `steps`, `lr`: every head is fitted from `init` (a warm start: fine-tuning) with these steps and rate.

    Each returned/recorded row: iteration, map, per_class (list), accuracy, selected {pool clip: class},
    precision of the new selections where the truth is known, seconds.
    """
    C = len(data.labels)
    history = list(done or [])
    selected: dict[int, int] = {}
    for row in history:
        selected.update({int(k): v for k, v in row["selected"].items()})
    head = None
    if not history:  # iteration 0: the seed alone
        t = time.time()
        head = fit_head(data, {}, pseudo_weight, seed, init, steps, lr)
        ev = evaluate(head, data.test, C)
        row = {"iteration": 0, "map": ev["map"], "accuracy": ev["accuracy"], "per_class": ev["per_class"].tolist(),
               "selected": {}, "precision": None, "seconds": round(time.time() - t, 2)}
        history.append(row)
        if record:
            record(row)
    if head is None or selected:  # resumed: the head of the selections replayed (else iteration 0's is it)
        head = fit_head(data, selected, pseudo_weight, seed, init, steps, lr)
    best = np.asarray(history[0]["per_class"])
    for row in history[1:]:
        best = np.fmax(best, np.asarray(row["per_class"]))
    stale = 0
    for row in history[1:][::-1]:  # trailing iterations without improvement, for resumed runs
        if row.get("improved"):
            break
        stale += 1
    while history[-1]["iteration"] < iterations and stale < patience:
        t = time.time()
        taken = np.zeros(data.pool.n_clips, bool)
        taken[list(selected)] = True
        view = PoolView(clip_probs(head, data.pool), data.pool_text_sims, taken)
        new = strategy.select(view, cap)
        selected.update(new)
        head = fit_head(data, selected, pseudo_weight, seed, init, steps, lr)
        ev = evaluate(head, data.test, C)
        known = [(c, k) for c, k in new.items() if data.pool.y[c] >= 0 or data.pool.y[c] == -2]
        prec = float(np.mean([data.pool.y[c] == k for c, k in known])) if known else None
        improved = bool(np.any(ev["per_class"] > best + 1e-9))
        best = np.fmax(best, ev["per_class"])
        stale = 0 if improved else stale + 1
        row = {"iteration": history[-1]["iteration"] + 1, "map": ev["map"], "accuracy": ev["accuracy"],
               "per_class": ev["per_class"].tolist(), "selected": {int(c): int(k) for c, k in new.items()},
               "precision": prec, "improved": improved, "seconds": round(time.time() - t, 2)}
        history.append(row)
        if record:
            record(row)
    return history, head


def load_done(catalogue, run_name: str, strategy: str, labels: list[str]) -> list[dict]:
    """Iterations a run already recorded (to resume it)."""
    out = []
    for r in catalogue.iterations(run_name, strategy):
        it, m, per, extra = r["iteration"], r["map"], r["per_class"] or {}, r["selected"] or {}
        per = [np.nan if per.get(l) is None else per[l] for l in labels]
        out.append({"iteration": it, "map": m, "per_class": per, "selected": extra.get("selected", {}),
                    "accuracy": extra.get("accuracy"), "precision": extra.get("precision"),
                    "improved": extra.get("improved"), "seconds": extra.get("seconds")})
    return out


def recorder(catalogue, run_name: str, strategy: str, model: str | None, labels: list[str]):
    def record(row: dict) -> None:
        per = {labels[i]: (None if np.isnan(v) else round(v, 4)) for i, v in enumerate(row["per_class"])}
        extra = {k: row.get(k) for k in ("selected", "accuracy", "precision", "improved", "seconds")}
        catalogue.record_iteration(run_name, row["iteration"], strategy, model, row["map"], per, extra)
    return record
