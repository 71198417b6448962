"""`nels learn`: the never-ending loop on a real library.

Labelled data (a dataset: ESC-50 or folder-per-class) gives the seed (training folds) and the
fixed test set (--test-fold); the pool is every clip the library crawled or ingested, with its crawl
text (query + title); website feedback marked relevant counts as labels, marked not relevant takes
the clip out of the pool. Each iteration is recorded in the library (`iterations`), a run resumes
under the same --run name, and the result is a new model version (backbone + re-trained head) in
<library>/models/, applied with --apply (or later with `nels reindex --model PATH`).

--add-class NAME --query Q crawls for Q, labels what it finds as NAME (bootstrapping from the
query), and brings the new class into the loop.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from nels.errors import ModelError, NelsError
from nels.learn import loop, select

STRATEGIES = {"threshold": select.Threshold, "calibrated": select.Calibrated, "clarity": select.Clarity,
              "clarity+semantic": select.ClaritySemantic}


def _library_pool(lib, enc, progress):
    """(Split of library clips, clip ids, crawl texts)."""
    from nels.audio.decode import decode
    from nels.learn.embed import embed_many

    # a library on object storage: its local copy; an original kept in place that is missing or changed: left out
    readable = list(lib.readable_media(lib.catalogue.clips(("id", "media_path", "query", "title"))))
    rows, keys = [r for r, _ in readable], [str(p) for _, p in readable]
    X, clip = embed_many(enc, keys, lambda k: decode(k, max_seconds=600), "library", progress)
    texts = [((r[2] or "") + " | " + (r[3] or "")).strip(" |") for r in rows]
    return loop.Split(X, clip, np.full(len(rows), -1)), [r[0] for r in rows], texts


def _feedback_labels(lib, labels, space) -> tuple[dict[int, int], set[int]]:
    """Website judgements -> ({clip id: class} for relevant, {clip ids} judged not relevant)."""
    pos, neg = {}, set()
    for q, clip_id, rel, label in lib.catalogue.all_feedback():
        if not rel:
            neg.add(clip_id)
            continue
        if label in labels:
            pos[clip_id] = labels.index(label)
            continue
        sims, _ = space.query([q])
        if sims[0].max() >= 0.5:  # only when the query clearly names a class
            pos[clip_id] = int(sims[0].argmax())
    return pos, neg


def learn(lib, dataset: str, fmt: str = "esc50", test_fold: int = 1, strategy: str = "clarity+semantic",
          iterations: int = 5, cap: int = 5, patience: int = 2, run: str | None = None,
          add_classes: list[tuple[str, str]] = (), per_query: int = 20, apply: bool = False,
          progress: bool = True) -> dict:
    from nels.audio.decode import decode
    from nels.learn.embed import embed_many
    from nels.learn.heads import save_with_head
    from nels.training.datasets import load_dataset
    from nels.encoders.selection import library_encoder
    from nels.search.query import label_space

    enc = library_encoder(lib)
    if not enc.labels or not hasattr(enc, "path"):
        raise ModelError("the learning loop re-trains a classifier: index the library with a CNN model first"
                         " ('nels reindex --model default')")
    labels = list(enc.labels)
    # new classes: crawl, then label the clips found by that query
    for name, query in add_classes:
        from nels.ingest.runner import IngestOptions, crawl

        crawl(lib, [query], per_query, options=IngestOptions(progress=progress, max_duration=600))
        if name not in labels:
            labels.append(name)
    ds = load_dataset(dataset, fmt)
    missing = [l for l in ds.labels if l not in labels]
    if missing:
        raise NelsError(f"the dataset has classes the model lacks: {', '.join(missing[:5])}")
    remap = np.array([labels.index(l) for l in ds.labels])
    tr = [it for it in ds.items if fmt != "esc50" or it.fold != test_fold]
    te = [it for it in ds.items if fmt == "esc50" and it.fold == test_fold]
    if not te:
        raise NelsError("no test clips: use an ESC-50 layout and --test-fold K")

    def split(items, tag):
        X, clip = embed_many(enc, [str(it.path) for it in items], lambda k: decode(k), tag, progress)
        return loop.Split(X, clip, remap[[it.label for it in items]])

    seed, test = split(tr, f"seed-{ds.root}-{test_fold}"), split(te, f"test-{ds.root}-{test_fold}")
    pool, clip_ids, texts = _library_pool(lib, enc, progress)
    space = label_space(labels)
    sims = space.query(texts)[0] if texts else np.zeros((0, len(labels)))
    pos, neg = _feedback_labels(lib, labels, space)
    # bootstrap new classes from their query; feedback labels join the seed
    new_ids = {labels.index(n): q for n, q in add_classes}
    q_of = {r[0]: r[1] for r in lib.catalogue.clips(("id", "query"))}
    extra = dict(pos)
    for k, q in new_ids.items():
        extra.update({cid: k for cid in clip_ids if q_of.get(cid) == q})
    if extra:
        idx = [clip_ids.index(c) for c in extra if c in clip_ids]
        seg = pool.segments_of(idx)
        remapped = {c: i for i, c in enumerate(idx)}
        add = loop.Split(pool.X[seg], np.array([remapped[c] for c in pool.clip[seg]]) + seed.n_clips,
                         np.array([extra[clip_ids[c]] for c in idx]))
        seed = loop.Split(np.concatenate([seed.X, add.X]), np.concatenate([seed.clip, add.clip]),
                          np.concatenate([seed.y, add.y]))
    excluded = {clip_ids.index(c) for c in set(extra) | neg if c in clip_ids}
    keep = np.array([i not in excluded for i in range(pool.n_clips)], bool)
    data = loop.LoopData(labels, seed, pool, test, sims, clip_ids)
    st = STRATEGIES[strategy]()
    if isinstance(st, select.Calibrated):
        from nels.learn.experiment import calibration_data

        st.fit(*calibration_data(data))

    class Masked:  # never select clips judged not relevant or already labelled
        name = st.name

        def select(self, view, cap):
            view.taken = view.taken | ~keep
            return st.select(view, cap)

    run = run or f"learn-{time.strftime('%Y%m%d-%H%M%S')}"
    done = loop.load_done(lib.catalogue, run, st.name, labels)
    hist, head = loop.run(data, Masked(), iterations, cap, patience, done=done,
                          record=loop.recorder(lib.catalogue, run, st.name, enc.name, labels))
    best = max(hist, key=lambda r: r["map"])
    out = lib.path / "models" / run
    save_with_head(Path(enc.path), out, head[0], head[1], labels, f"{enc.name}+{run}",
                   {"learning": {"run": run, "strategy": st.name, "iterations": len(hist) - 1,
                                 "map": [r["map"] for r in hist]}})
    lib.catalogue.register_model(f"{enc.name}+{run}", "classifier", str(out), labels)
    result = {"run": run, "strategy": st.name, "map": [round(r["map"], 4) for r in hist],
              "selected": sum(len(r["selected"]) for r in hist), "best_iteration": best["iteration"],
              "model": str(out), "classes": len(labels), "feedback_labels": len(pos)}
    if apply:
        from nels.ingest.reindex import reindex

        result["reindex"] = reindex(lib, str(out), progress=progress)
    return result
