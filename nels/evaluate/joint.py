"""`nels evaluate joint`: the joint space on a held-out fold.

Two parts:

* the space itself (numpy over the fold's segment embeddings): MAP@3 and mAP for text->audio (class
  names vs clips), audio->text (clips vs the class names), audio->audio and text->text (phrases vs
  phrases of the vocabulary), against the chance level a ranking without a shared space gets;
* the search modes a user meets (through Library.search on a library of the fold): paraphrases,
  out-of-vocabulary queries and the words-vs-sounds disagreement set, linguistic vs joint vs fused.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from nels.errors import ModelError
from nels.metrics import average_precision, average_precision_at

DATA = Path(__file__).resolve().parent.parent / "data" / "eval"


def _scores(sims: np.ndarray, relevant: np.ndarray) -> dict:
    """sims (n_queries, n_items), relevant boolean same shape -> mAP and MAP@3 over the queries."""
    aps, ap3 = [], []
    for s, r in zip(sims, relevant):
        order = np.argsort(-s)
        aps.append(average_precision(r[order], int(r.sum())))
        ap3.append(average_precision_at(r[order], 3, int(r.sum())))
    return {"mAP": round(float(np.mean(aps)), 4), "MAP@3": round(float(np.mean(ap3)), 4), "queries": len(aps)}


def space_metrics(joint, emb, clip, label, labels, phrases, owners, seed: int = 0) -> dict:
    """The four retrieval directions inside the joint space, plus chance level."""
    a = joint.audio(emb)
    clips = np.unique(clip)
    cl = np.array([label[clip == c][0] for c in clips])
    clip_vec = np.stack([a[clip == c].mean(0) for c in clips])
    clip_vec /= np.linalg.norm(clip_vec, axis=1, keepdims=True)
    from nels.encoders.text import load_vocabulary

    voc = load_vocabulary()
    names = joint.text([voc.name(l) for l in labels])
    # text -> audio: a clip scores its best segment
    seg_sims = names @ a.T
    t2a = np.stack([np.array([seg_sims[q, clip == c].max() for c in clips]) for q in range(len(labels))])
    out = {"text_to_audio": _scores(t2a, cl[None, :] == np.arange(len(labels))[:, None]),
           "audio_to_text": _scores(clip_vec @ names.T, cl[:, None] == np.arange(len(labels))[None, :])}
    aa = clip_vec @ clip_vec.T
    np.fill_diagonal(aa, -np.inf)
    rel = cl[:, None] == cl[None, :]
    np.fill_diagonal(rel, False)
    out["audio_to_audio"] = _scores(aa, rel)
    pv = joint.text(phrases)
    tt = pv @ pv.T
    np.fill_diagonal(tt, -np.inf)
    rel = owners[:, None] == owners[None, :]
    np.fill_diagonal(rel, False)
    out["text_to_text"] = _scores(tt, rel)
    rng = np.random.default_rng(seed)
    rand = rng.random((len(labels), len(clips)))
    out["chance_text_to_audio"] = _scores(rand, cl[None, :] == np.arange(len(labels))[:, None])
    rand = rng.random((len(clips), len(labels)))
    out["chance_audio_to_text"] = _scores(rand, cl[:, None] == np.arange(len(labels))[None, :])
    return out


def evaluate_joint(dataset: str, fmt: str = "esc50", fold: int = 1, model: str | None = None,
                   workdir: str | None = None, progress: bool = True) -> dict:
    import tempfile

    from nels.training.datasets import load_dataset
    from nels.encoders.base import load_encoder
    from nels.encoders.joint import joint_encoder_for
    from nels.training.joint import class_phrases, segment_embeddings
    from nels.encoders.text import content_words
    from nels.evaluate.retrieval import build_fold_library, rank_text

    enc = load_encoder(model)
    joint = joint_encoder_for(enc)
    if joint is None:
        raise ModelError(f"no joint model for {enc.name}; train one with 'nels train-joint --dataset DIR'")
    if joint.meta.get("exclude_fold") not in (None, fold) or joint.meta.get("exclude_fold") is None:
        print(f"warning: the joint model was trained without excluding fold {fold}", file=sys.stderr)
    ds = load_dataset(dataset, fmt)
    labels = list(ds.labels)
    emb, clip, label = segment_embeddings(ds, enc, progress=progress)
    keep = np.array([ds.items[c].fold == fold for c in clip])
    phrases, owners = class_phrases(labels)
    out = {"dataset": str(dataset), "fold": fold, "model": enc.name, "joint_model": joint.name,
           "loss": joint.meta.get("loss"), "space": space_metrics(joint, emb[keep], clip[keep], label[keep], labels,
                                                                 phrases, owners)}
    where = Path(workdir or tempfile.mkdtemp(prefix="nels-eval-")) / f"fold{fold}-library"
    lib, truth = build_fold_library(dataset, fmt, fold, model, where)
    n = len(truth)
    sets = {
        "paraphrases": [(q["text"], q["class"]) for q in json.loads((DATA / "paraphrases.json").read_text())["queries"]],
        "out_of_vocabulary": [(q["text"], q["classes"]) for q in json.loads((DATA / "oov.json").read_text())["queries"]],
        "words_vs_sounds": [(q["text"], q["class"]) for q in json.loads((DATA / "disagree.json").read_text())["queries"]],
    }
    # the joint model's training text (vocabulary + training phrasings) covers some "out-of-vocabulary"
    # words; the queries none of whose words it saw are reported on their own
    seen = set()
    for p in phrases + _training_text(joint, labels):
        seen |= content_words(p)
    sets["out_of_vocabulary_unseen_by_joint"] = [(t, c) for t, c in sets["out_of_vocabulary"]
                                                 if not content_words(t) & seen]
    out["search"] = {name: {m: rank_text(lib, qs, truth, m, n) for m in ("linguistic", "joint", "fused")}
                     for name, qs in sets.items()}
    out["search"]["out_of_vocabulary"]["seen_by_joint_training_text"] = (
        len(sets["out_of_vocabulary"]) - len(sets["out_of_vocabulary_unseen_by_joint"]))
    return out


def _training_text(joint, labels) -> list[str]:
    from nels.training.joint import training_phrases

    f = (joint.meta.get("training_text") or {}).get("extra_file")
    if not f or not (joint.path / f).exists():
        return []
    return training_phrases(labels, joint.path / f)[0]
