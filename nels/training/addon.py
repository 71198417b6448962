"""New classes beside a library's model (`nels train --add`): adding "beep" must not cost the other 50.

A user's dataset (DIR/<class>/<audio>, one class is enough) is encoded with the library's model (on the
backbone where the library uses one: YAMNet, or a head on it), and a small classifier is trained on those
segment vectors: a softmax over the new classes and "none of them", whose "none" examples are the library's own
segments (its stored vectors, nothing decoded again; those nearly identical to a new class's examples are left
out). The result (`nels.encoders.head.AddOnEncoder`, format "nels-addon") is the base model unchanged — its
vectors, its classes and so its joint space — plus the new classes' probabilities; `nels reindex --model SPEC`
(or `--apply`) puts it in the library, and asks nothing, since nothing is dropped.
"""
from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from nels.errors import DatasetError

MAX_NEGATIVES = 5000  # library segments used as examples of "none of the new classes"
MIN_NEGATIVES = 20
NEAR_DUPLICATE = 0.98  # a library segment this close (cosine) to a new class's example is not a "none" example
VALIDATION_SHARE = 0.2


def _choose_part(parts: list[str], encoders: list, wanted: str | None) -> int:
    """Which encoder of the library's spec the classes go beside: `wanted` (a spec part, or an encoder's name or
    space), else the backbone where the library has one (window embeddings: YAMNet, or a head on it), else the
    primary."""
    if wanted:
        for i, (p, e) in enumerate(zip(parts, encoders)):
            if wanted in (p, e.name, e.space):
                return i
        raise DatasetError(f"'{wanted}' is not one of the library's models ({', '.join(parts)})")
    for i, e in enumerate(encoders):
        inner = getattr(e, "base", e)
        if hasattr(inner, "window_outputs") or hasattr(inner, "backbone"):
            return i
    return 0


def _sample_negatives(lib, space: str, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Up to `limit` of the library's vectors in `space` (reservoir sample)."""
    keep: list[np.ndarray] = []
    seen = 0
    for _, vecs in lib.catalogue.iter_vectors(space):
        for v in vecs:
            if len(keep) < limit:
                keep.append(v.copy())
            else:
                j = int(rng.integers(seen + 1))
                if j < limit:
                    keep[j] = v.copy()
            seen += 1
    return np.stack(keep) if keep else np.zeros((0, 0), np.float32)


def _fit(x: np.ndarray, y: np.ndarray, n_classes: int, seed: int):
    """Multinomial logistic regression (classes 0..n_classes, the last one "none"), balanced by class. Returns
    (W (n_classes + 1, d), b (n_classes + 1,), mean, std) for a softmax over standardised inputs."""
    from sklearn.linear_model import LogisticRegression

    mean = x.mean(axis=0)
    std = x.std(axis=0) + 1e-6
    clf = LogisticRegression(C=1.0, max_iter=3000, class_weight="balanced", random_state=seed)
    clf.fit((x - mean) / std, y)
    if n_classes + 1 == 2:  # sklearn keeps one row for two classes: p(none) = sigmoid(w.x + b)
        w, b = clf.coef_[0], float(clf.intercept_[0])
        return np.stack([-w / 2, w / 2]), np.array([-b / 2, b / 2]), mean, std
    return clf.coef_, clf.intercept_, mean, std


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _metrics(model, x: np.ndarray, y: np.ndarray, labels: list[str]) -> dict:
    w, b, mean, std = model
    pred = _softmax(((x - mean) / std) @ w.T + b).argmax(axis=1)
    none = len(labels)
    out = {"segments": int(len(y))}
    for i, lb in enumerate(labels):
        pos = y == i
        if pos.any():
            out[f"recall_{lb}"] = round(float((pred[pos] == i).mean()), 4)
    neg = y == none
    if neg.any():
        out["false_positive_rate"] = round(float((pred[neg] != none).mean()), 4)  # library segments given a new class
    return out


def train_addon(library, dataset, fmt: str = "folders", out=None, base: str | None = None, seed: int = 0,
                command: str | None = None, max_negatives: int = MAX_NEGATIVES) -> dict:
    """Train the classes of `dataset` beside the model of the library at `library` (see the module docstring).

    Returns a summary: {model (folder written), spec (the library's model spec with the classes added: what
    `nels reindex --model` takes), labels, base, metrics, ...}. DatasetError for an empty library, a class the
    model already has, or a dataset with no usable audio."""
    from nels.audio.decode import decode
    from nels.encoders.head import save_addon
    from nels.encoders.registry import create_encoder
    from nels.encoders.selection import split_spec
    from nels.errors import DecodeError
    from nels.store.library import Library
    from nels.training.datasets import load_dataset, load_folders

    t0 = time.time()
    rng = np.random.default_rng(seed)
    with Library(library, create=False) as lib:
        spec = lib.get_meta("model")
        if not spec or lib.newest_ids()["segments"] == 0:
            raise DatasetError(f"{library}: the library is empty; ingest audio first (its segments teach the new"
                               f" classes what they are not)")
        parts = split_spec(spec)
        encoders = [create_encoder(p) for p in parts]
        i = _choose_part(parts, encoders, base)
        enc = encoders[i]
        ds = load_folders(dataset, min_classes=1) if fmt == "folders" else load_dataset(dataset, fmt)
        labels = list(ds.labels)
        known = set(enc.labels or [])
        if known & set(labels):
            raise DatasetError(f"{enc.name} already has the class(es) {', '.join(sorted(known & set(labels)))}; add"
                               f" only new ones (rename the folder, or retrain the model with 'nels train')")
        xs, ys, groups, skipped = [], [], [], []
        for k, it in enumerate(ds.items):
            try:
                x = decode(it.path, sr=enc.sample_rate)
            except DecodeError as exc:
                skipped.append((str(it.path), str(exc)))
                continue
            e = enc.encode(x, enc.sample_rate).embeddings
            if not len(e):
                skipped.append((str(it.path), "no sound (silent, or shorter than a segment)"))
                continue
            xs.append(e)
            ys.append(np.full(len(e), it.label))
            groups.append(np.full(len(e), k))
        if not xs:
            raise DatasetError(f"{dataset}: no usable audio ({len(skipped)} file(s) skipped)")
        missing = [lb for j, lb in enumerate(labels) if not any((y == j).any() for y in ys)]
        if missing:
            raise DatasetError(f"{dataset}: no usable audio for {', '.join(missing)}")
        xp, yp, gp = np.concatenate(xs).astype(np.float32), np.concatenate(ys), np.concatenate(groups)
        neg = _sample_negatives(lib, enc.space, max_negatives, rng)
    if len(neg):
        near = (neg / np.linalg.norm(neg, axis=1, keepdims=True)) @ (xp / np.linalg.norm(xp, axis=1, keepdims=True)).T
        neg = neg[near.max(axis=1) < NEAR_DUPLICATE]
    if len(neg) < MIN_NEGATIVES:
        raise DatasetError(f"{library}: {len(neg)} library segments unlike the new classes; at least {MIN_NEGATIVES}"
                           f" are needed as examples of 'none of them': ingest more audio first")
    none = len(labels)
    # validation: a share of each class's files and of the library segments, never seen in training
    val_files = set()
    for j in range(len(labels)):
        files = np.unique(gp[yp == j])
        if len(files) >= 3:
            val_files |= set(rng.choice(files, max(1, int(round(len(files) * VALIDATION_SHARE))), replace=False).tolist())
    vmask = np.isin(gp, list(val_files))
    nperm = rng.permutation(len(neg))
    n_val_neg = int(len(neg) * VALIDATION_SHARE) if val_files else 0
    neg_val, neg_train = neg[nperm[:n_val_neg]], neg[nperm[n_val_neg:]]
    x_train = np.concatenate([xp[~vmask], neg_train])
    y_train = np.concatenate([yp[~vmask], np.full(len(neg_train), none)])
    metrics = {}
    if val_files:
        model = _fit(x_train, y_train, len(labels), seed)
        metrics["validation"] = _metrics(model, np.concatenate([xp[vmask], neg_val]),
                                         np.concatenate([yp[vmask], np.full(len(neg_val), none)]), labels)
    # the model kept is fitted on everything
    x_all = np.concatenate([xp, neg])
    y_all = np.concatenate([yp, np.full(len(neg), none)])
    w, b, mean, std = _fit(x_all, y_all, len(labels), seed)
    metrics["training"] = _metrics((w, b, mean, std), x_all, y_all, labels)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", "+".join(labels))[:60]
    name = f"{enc.name}+{safe}"
    out = Path(out) if out else Path(library) / "models" / f"added-{safe}"
    part = parts[i]
    if Path(part).exists():  # a folder: recorded absolute, so the add-on loads from anywhere
        part = str(Path(part).resolve())
    save_addon(out, part, enc, labels, w, b, mean, std, name, extra={
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": command,
        "dataset": str(Path(dataset).resolve()), "library": str(Path(library).resolve()),
        "examples": {"segments": int(len(xp)), "files": int(len(np.unique(gp))), "library_segments": int(len(neg))},
        "metrics": metrics, "skipped": skipped[:50]})
    new_parts = list(parts)
    new_parts[i] = str(out.resolve())
    return {"model": str(out), "spec": "+".join(new_parts), "labels": labels, "base": enc.name,
            "base_classes": len(enc.labels or []), "metrics": metrics, "skipped": skipped,
            "train_seconds": round(time.time() - t0, 1)}
