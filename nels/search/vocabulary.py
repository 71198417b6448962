"""What a library can be searched for: every class its models know, with how many segments each one labels.

`library_vocabulary(lib)` is what `nels vocabulary`, GET /api/vocabulary and the site's vocabulary page
show (facets, like datasette's: a count per value, each value a search). A segment counts for the class its
model finds most probable, so every model's counts add up to the segments it labelled.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from nels.errors import NelsError


def _vocabulary_of(lib, model: str, labels: list[str]):
    """The vocabulary a model's classes are described with (display names, descriptions): the model's own
    file when the library's encoder of that name has one, else the AudioSet vocabulary for AudioSet labels,
    else the shipped ESC-50 one (labels without an entry show their own name)."""
    from nels.encoders.selection import library_primaries
    from nels.encoders.text import load_vocabulary
    from nels.search.query import model_vocabulary

    enc = None
    try:
        enc = next((e for e in library_primaries(lib) if e.name == model), None)
    except (NelsError, OSError):  # the model's files are gone: the counts are still worth listing
        enc = None
    path = model_vocabulary(enc if enc is not None else SimpleNamespace(path=None, labels=labels))
    try:
        return load_vocabulary(path)
    except NelsError:
        return load_vocabulary()


def _counts(lib, model: str) -> tuple[np.ndarray, list[str]]:
    """(segments per label, labels) of one classifier: how many segments it finds most probable as each
    (read from the catalogue, not the search cache, which keeps removed segments until new ones come)."""
    mat = lib.catalogue.prob_matrix(model)
    if mat is None:
        labels = lib.catalogue.model_labels(model)
        return np.zeros(len(labels), dtype=np.int64), labels
    _, probs, labels, _ = mat
    top = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=np.int64)
    return np.bincount(top, minlength=len(labels)), list(labels)


def library_vocabulary(lib) -> dict:
    """Every class the library's classifiers know, per model, with its segment count.

    Returns {"segments": int (segments labelled), "models": [{"model", "classes", "segments", "labels": [{"label", "name",
    "description", "segments"}, ...]}]}; labels are listed most frequent first (then by name), classes that
    label no segment included (count 0): the model knows them, the library holds none yet.
    """
    stamp = lib.data_version()
    cached = lib.remembered("vocabulary")
    if cached is not None and cached[0] == stamp:
        return cached[1]
    models = []
    for model in lib.catalogue.prob_models():
        counts, labels = _counts(lib, model)
        vocab = _vocabulary_of(lib, model, labels)
        rows = []
        for label, n in zip(labels, counts.tolist()):
            entry = vocab.get(label)
            rows.append({"label": label, "name": entry.name, "description": entry.description, "segments": int(n)})
        rows.sort(key=lambda r: (-r["segments"], r["name"].lower()))
        models.append({"model": model, "classes": len(labels), "segments": int(counts.sum()), "labels": rows})
    out = {"segments": max((m["segments"] for m in models), default=0), "models": models}
    lib.remember("vocabulary", (stamp, out))
    return out
