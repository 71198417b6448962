"""Generalisation on real sounds: `nels evaluate retrieval|classification --format realworld`.

A realworld dataset (`nels.training.datasets.load_realworld`: labels.csv with file, label, esc50_class) holds
clips from sources no model here was trained on; some belong to an ESC-50 class, the rest carry other labels.
It is an evaluation set only: nothing is trained, fitted or chosen on it (every threshold and weight below is
a default of NELS, fixed elsewhere).

Retrieval (everything through `search`, the code path of the CLI and website, on one library of all clips;
mAP over the whole ranking of the clips, AP@3 and P@10; a clip the ranking never returns counts as a miss):

* `text_esc50_names`: per ESC-50 class with clips, the query is its name in the shipped ESC-50 vocabulary
  ("sea waves", "door knock"); relevant = the clips whose esc50_class is that class. Every clip is ranked.
* `text_paraphrases`: the committed paraphrases (nels/data/eval/paraphrases.json) of the ESC-50 classes
  present; relevant as above.
* `text_other_labels`: open vocabulary. Per label none of whose clips has an ESC-50 class ("horse neighing"),
  the query is the label text; relevant = the clips with that label.
* `audio`: every clip queries the library; relevant = the other clips with its label (the query clip is
  dropped from its ranking); a clip whose label has no other clip has no relevant item and is not a query.

Classification: top-1 over the 50 ESC-50 classes on the clips that have an esc50_class. A clip's class
probabilities are the mean over the encoder's windows (the library's segments; the CNN and a head on a backbone
use the pooling their model.json records). An encoder whose labels are the ESC-50 classes answers with its argmax; any other
(an AudioSet model) answers zero-shot: class c scores the clip by the same hierarchy-aware label similarity
that linguistic search uses for the query "name of c" (`nels.search.query.text_scores`).
"""
from __future__ import annotations

import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from nels.evaluate.retrieval import paraphrase_queries, rank_text, _summary
from nels.metrics import average_precision, average_precision_at, precision_at
from nels.search.query import search


def build_library(dataset: str, model: str | None, where: Path):
    """A library of every clip of a realworld dataset (kept in `where` across runs, so a second run with the
    same model only searches). Returns (lib, dataset, clip id -> label, clip id -> esc50_class or None)."""
    from nels.ingest.runner import IngestOptions, ingest
    from nels.store.library import Library
    from nels.training.datasets import load_dataset

    ds = load_dataset(dataset, "realworld")
    lib = Library(where, catalogue=str(Path(where) / "nels.db"))  # its own, never $NELS_CATALOGUE's
    ingest(lib, [str(it.path) for it in ds.items], model=model or "default",
           options=IngestOptions(progress=sys.stderr.isatty()))
    by_path = {str(Path(it.path).resolve()): it for it in ds.items}
    labels, esc = {}, {}
    for cid, uri in lib.catalogue.clips(("id", "source_uri")):
        it = by_path.get(str(Path(uri).resolve()))
        if it is not None:
            labels[cid] = ds.labels[it.label]
            esc[cid] = it.esc50_class
    return lib, ds, labels, esc


def esc50_name_queries(classes) -> list[tuple[str, str]]:
    """(the class's name in the shipped ESC-50 vocabulary, class) for each ESC-50 class given."""
    from nels.encoders.text import load_vocabulary

    voc = load_vocabulary()
    return [(voc.name(c), c) for c in sorted(classes)]


def other_label_queries(labels: dict, esc: dict) -> list[tuple[str, str]]:
    """(label text, label) for every label none of whose clips has an ESC-50 class."""
    with_esc = {labels[c] for c in labels if esc.get(c)}
    return [(l, l) for l in sorted(set(labels.values()) - with_esc)]


def rank_audio_same_label(lib, truth: dict, mode: str, n: int) -> dict:
    """Every clip with at least one other clip of its label queries the library (audio)."""
    counts = Counter(truth.values())
    aps, ap3, p10, lat = [], [], [], []
    for (cid, _), media in lib.readable_media(lib.catalogue.clips(("id", "media_path"))):
        label = truth.get(cid)
        if label is None or counts[label] < 2:
            continue
        t = time.perf_counter()
        res = search(lib, audio=media, mode=mode, k=n)
        lat.append(time.perf_counter() - t)
        rel = [truth.get(r["clip_id"]) == label for r in res if r["clip_id"] != cid]
        aps.append(average_precision(rel, counts[label] - 1))
        ap3.append(average_precision_at(rel, 3, counts[label] - 1))
        p10.append(precision_at(rel, 10))
    return _summary(aps, ap3, p10, lat)


def evaluate_retrieval_realworld(dataset: str, model: str | None = None, workdir: str | None = None,
                                 modes_text=None, modes_audio=None) -> dict:
    from nels.search import joint
    from nels.search.modes import default_mode

    tag = (str(model or "default").replace("/", "_").replace(":", "_"))[-60:]
    where = Path(workdir or tempfile.mkdtemp(prefix="nels-eval-")) / f"realworld-{tag}-library"
    lib, ds, labels, esc = build_library(dataset, model, where)
    n = len(labels)
    esc_truth = {c: e for c, e in esc.items() if e}
    has_joint = joint.library_has_joint(lib)
    has_probs = bool(lib.prob_matrices())
    if modes_text is None:  # [] measures audio only
        modes_text = ((["linguistic"] if has_probs else []) + (["joint", "fused"] if has_joint else []))
    if modes_audio is None:  # [] measures text only (a change that touches text search alone)
        modes_audio = ["acoustic", "joint", "fused"] if has_joint else ["acoustic"]
    present = sorted(set(esc_truth.values()))
    out = {"dataset": str(dataset), "format": "realworld", "model": lib.get_meta("model_name"),
           "spec": lib.get_meta("model"), "clips": n,
           "segments": lib.stats()["segments"], "skipped": [p for p, _ in ds.skipped],
           "esc50_clips": len(esc_truth), "esc50_classes": len(present),
           "default_mode": {"text": default_mode(lib, True, False, has_joint) if (has_probs or has_joint) else None,
                            "audio": default_mode(lib, False, True, has_joint)},
           "text_esc50_names": {}, "text_paraphrases": {}, "text_other_labels": {}, "audio": {}}
    names, paras, others = esc50_name_queries(present), paraphrase_queries(present), other_label_queries(labels, esc)
    for m in modes_text:
        out["text_esc50_names"][m] = rank_text(lib, names, esc_truth, m, n)
        out["text_paraphrases"][m] = rank_text(lib, paras, esc_truth, m, n)
        out["text_other_labels"][m] = rank_text(lib, others, labels, m, n)
    for m in modes_audio:
        out["audio"][m] = rank_audio_same_label(lib, labels, m, n)
    return out


# ------------------------------------------------------------------------------------------ classification


def clip_probabilities(encoder, paths, progress: bool = False) -> np.ndarray:
    """(n_clips, n_labels) class probabilities per clip: the mean over the encoder's windows (a clip with no
    window holding sound is encoded whole); the CNN uses its own clip pooling (model.json)."""
    from nels.audio.decode import decode
    from nels.encoders.base import encode_waveform

    cnn_pooling = getattr(encoder, "meta", {}).get("pooling") if hasattr(encoder, "forward_mels") else None
    out = []
    for p in paths:
        x = decode(p, sr=encoder.sample_rate)
        if cnn_pooling:
            from nels.audio.features import logmel
            from nels.training.train import predict_clips

            out.append(predict_clips(encoder, [logmel(x, encoder.feature_config)], cnn_pooling)[0])
        elif hasattr(encoder, "clip_probs"):  # a head on a backbone pools its windows its own way (model.json)
            out.append(encoder.clip_probs(x, encoder.sample_rate))
        else:
            enc = encode_waveform(encoder, x, encoder.sample_rate, whole_if_empty=True)
            out.append(enc.probs.mean(axis=0))
        if progress:
            print(f"\r{len(out)}/{len(paths)} clips", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return np.asarray(out, dtype=np.float32)


def esc50_class_scores(encoder, probs: np.ndarray, classes: list[str]) -> tuple[np.ndarray, str]:
    """(n_clips, len(classes)) scores and how they were made: the encoder's own columns when it has every
    class, else zero-shot label similarity of each class's vocabulary name (see the module docstring)."""
    labels = list(encoder.labels or [])
    if set(classes) <= set(labels):
        idx = [labels.index(c) for c in classes]
        return probs[:, idx], "argmax"
    from nels.search.query import model_vocabulary, text_scores

    names = [q for q, _ in esc50_name_queries(classes)]
    order = {c: i for i, c in enumerate(sorted(classes))}
    cols = text_scores(names, probs, labels, model_vocabulary(encoder))  # (n_clips, n_queries), sorted classes
    return cols[:, [order[c] for c in classes]], "zero-shot label similarity"


def evaluate_classification_realworld(dataset: str, model: str | None = None, progress: bool = True) -> dict:
    """Top-1 over the ESC-50 classes on the clips with an esc50_class, per classifier of `model` (a spec;
    "default+yamnet" gives one result per encoder, under "per_model"; the top level is the first one's)."""
    from nels.encoders.selection import encoders_for, primaries
    from nels.errors import ModelError
    from nels.training.datasets import esc50_class_names, load_dataset

    ds = load_dataset(dataset, "realworld")
    items = [it for it in ds.items if it.esc50_class]
    classes = esc50_class_names()
    encs = [e for e in primaries(encoders_for(model or "default")) if e.labels]
    if not encs:
        raise ModelError(f"'{model}' has no classifier (no class labels): classification needs one")
    y = np.array([classes.index(it.esc50_class) for it in items])
    results = []
    for enc in encs:
        probs = clip_probabilities(enc, [it.path for it in items], progress=progress)
        scores, how = esc50_class_scores(enc, probs, classes)
        pred = scores.argmax(axis=1)
        per_class = {}
        for c in sorted(set(y.tolist())):
            per_class[classes[c]] = {"clips": int((y == c).sum()), "correct": int(((y == c) & (pred == c)).sum())}
        results.append({"model_name": enc.name, "how": how,
                        "accuracy": round(float((pred == y).mean()), 4) if len(items) else None,
                        "per_class": per_class,
                        "confusions": Counter(f"{classes[a]} -> {classes[b]}"
                                              for a, b in zip(y, pred) if a != b).most_common(10)})
    out = {"model": str(model or "default"), "dataset": str(ds.root), "format": "realworld", "fold": None,
           "n_clips": len(items), "classes": len(set(y.tolist())), **results[0]}
    if len(results) > 1:
        out["per_model"] = results
    return out
