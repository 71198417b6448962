"""`nels evaluate retrieval`: index a held-out fold and measure search the way a user meets it.

Everything goes through `Library.search` (the code path of the CLI and website), on a library
built from the test fold with a model that never saw it:

* text -> audio, class-name queries ("sea waves"), and the committed paraphrase set
  (nels/data/eval/paraphrases.json, written before any measurement);
* audio -> audio: every clip queries the rest (the query clip itself is dropped from its ranking);
* mAP over the whole ranking of the fold's clips, and P@10. Relevant = same class.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from nels.metrics import average_precision, average_precision_at, precision_at
from nels.search.query import search

DATA = Path(__file__).resolve().parent.parent / "data"


def build_fold_library(dataset: str, fmt: str, fold: int, model: str | None, where: Path):
    """A library of the fold's clips (cached in `where` across runs); returns (lib, clip id -> label)."""
    from nels.store.library import Library
    from nels.ingest.runner import IngestOptions, ingest
    from nels.training.datasets import load_dataset

    ds = load_dataset(dataset, fmt)
    items = [it for it in ds.items if it.fold == fold] if fmt == "esc50" else ds.items
    lib = Library(where, catalogue=str(Path(where) / "nels.db"))  # its own, never $NELS_CATALOGUE's
    ingest(lib, [str(it.path) for it in items], model=model or "default", options=IngestOptions(progress=sys.stderr.isatty()))
    by_path = {str(Path(it.path).resolve()): ds.labels[it.label] for it in items}
    truth = {r[0]: by_path.get(str(Path(r[1]).resolve())) for r in lib.catalogue.clips(("id", "source_uri"))}
    return lib, {k: v for k, v in truth.items() if v is not None}


def rank_text(lib, queries, truth, mode, n):
    """Per query: AP, AP@3 and P@10 of the clip ranking; plus latencies.

    queries: (text, label) or (text, [labels]) pairs; a clip is relevant when its class is one of them.
    """
    from collections import Counter

    counts = Counter(truth.values())
    aps, ap3, p10, lat = [], [], [], []
    for text, label in queries:
        ok = {label} if isinstance(label, str) else set(label)
        total = sum(counts[l] for l in ok)
        t = time.perf_counter()
        res = search(lib, text=text, mode=mode, k=n)
        lat.append(time.perf_counter() - t)
        rel = [truth.get(r["clip_id"]) in ok for r in res]
        aps.append(average_precision(rel, total))
        ap3.append(average_precision_at(rel, 3, total))
        p10.append(precision_at(rel, 10))
    return _summary(aps, ap3, p10, lat)


def rank_audio(lib, truth, mode, n, limit=None):
    from collections import Counter

    counts = Counter(truth.values())
    aps, ap3, p10, lat = [], [], [], []
    rows = lib.catalogue.clips(("id", "media_path"))
    for (cid, _), media in lib.readable_media(rows[:limit]):  # a missing original kept in place: left out, said so
        label = truth.get(cid)
        if label is None:
            continue
        t = time.perf_counter()
        res = search(lib, audio=media, mode=mode, k=n)
        lat.append(time.perf_counter() - t)
        rel = [truth.get(r["clip_id"]) == label for r in res if r["clip_id"] != cid]
        aps.append(average_precision(rel, counts[label] - 1))
        ap3.append(average_precision_at(rel, 3, counts[label] - 1))
        p10.append(precision_at(rel, 10))
    return _summary(aps, ap3, p10, lat)


def _summary(aps, ap3, p10, lat):
    return {"mAP": round(float(np.mean(aps)), 4), "MAP@3": round(float(np.mean(ap3)), 4),
            "P@10": round(float(np.mean(p10)), 4), "queries": len(aps),
            "latency_ms_p50": round(float(np.percentile(lat, 50)) * 1000, 2),
            "latency_ms_p95": round(float(np.percentile(lat, 95)) * 1000, 2)}


def class_queries(labels) -> list[tuple[str, str]]:
    from nels.encoders.text import load_vocabulary

    voc = load_vocabulary()
    return [(voc.name(l), l) for l in labels]


def paraphrase_queries(labels, file: str = "paraphrases.json") -> list[tuple[str, str]]:
    """(text, class) of a paraphrase file in nels/data/eval/ for the given classes; [] when the file is absent.
    paraphrases.json: the repo's own (151, written 2026-11-25); paraphrases_independent.json: 200 written apart
    from the joint space's training phrasings (2026-12-02), to check that its gain holds for other wordings."""
    f = DATA / "eval" / file
    if not f.exists():
        return []
    data = json.loads(f.read_text())
    return [(q["text"], q["class"]) for q in data["queries"] if q["class"] in set(labels)]


def evaluate_retrieval(dataset: str, fmt: str = "esc50", fold: int = 1, model: str | None = None,
                       workdir: str | None = None, modes_text=None, modes_audio=None) -> dict:
    from nels.search import joint

    where = Path(workdir or tempfile.mkdtemp(prefix="nels-eval-")) / f"fold{fold}-library"
    lib, truth = build_fold_library(dataset, fmt, fold, model, where)
    labels = sorted(set(truth.values()))
    n = len(truth)
    has_joint = joint.library_has_joint(lib)
    if modes_text is None:  # [] measures audio only
        modes_text = ["linguistic", "joint", "fused"] if has_joint else ["linguistic"]
    if modes_audio is None:  # [] measures text only (a change that touches text search alone)
        modes_audio = ["acoustic", "joint", "fused"] if has_joint else ["acoustic"]
    out = {"dataset": str(dataset), "fold": fold, "model": lib.get_meta("model_name"), "clips": n,
           "segments": lib.stats()["segments"], "text_class_names": {}, "text_paraphrases": {},
           "text_paraphrases_independent": {}, "audio": {}}
    independent = paraphrase_queries(labels, "paraphrases_independent.json")
    for m in modes_text:
        out["text_class_names"][m] = rank_text(lib, class_queries(labels), truth, m, n)
        out["text_paraphrases"][m] = rank_text(lib, paraphrase_queries(labels), truth, m, n)
        if independent:
            out["text_paraphrases_independent"][m] = rank_text(lib, independent, truth, m, n)
    for m in modes_audio:
        out["audio"][m] = rank_audio(lib, truth, m, n)
    return out
