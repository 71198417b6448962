"""Why linguistic (text) search on YAMNet scores what it scores, on ESC-50 folds 2-5 (YAMNet never trained on
ESC-50, so every fold is fair for choosing its text-search method; fold 1 is the report fold; never realworld-dev).

    python3 bench/yamnet_text_study.py [--folds 2 3 4 5] [--json bench/results/yamnet-text-study.json]

Offline, with the functions search uses (`ConceptSpace`, `linguistic.label_weights`, `linguistic.score`); a clip
ranks by its best row, mAP over the fold's 400 clips, averaged over the folds. What is varied:

* pooling of YAMNet's 0.975 s windows: the mean over a 2 s segment's windows (what NELS stores), their max,
  the clip's max over all its windows (the issue's reference), the clip mean;
* the label space: the display names only (the reference), YAMNet's AudioSet vocabulary without hierarchy
  ("own"), with the AudioSet hierarchy only, and the shipped one (AudioSet + ESC-50 classes + hierarchy,
  `search_vocabulary`), also with the ESC-50 entries' synonyms (and descriptions) removed;
* `label_weights`' top-k and temperature;
* a similarity penalty on concepts borrowed from the ESC-50 vocabulary (not YAMNet labels, not AudioSet).

Queries (relevant = the clips of the class): ESC-50 names; 4 joint training phrasings per class
(nels/data/joint_phrases.json); the AudioSet classes the ESC-50 links name ("Bark", "Toothbrush"); and open
vocabulary by leaving classes out: the ESC-50 vocabulary loses 25 classes' entries (2 draws) and those
classes are queried by name and phrasings, so only AudioSet's concepts (or wrongly, another ESC-50 class's
synonyms) can answer them.
"""
from __future__ import annotations

import argparse
import json
import pickle
import random
import time
from dataclasses import replace

import numpy as np

from common import ROOT, esc50

from nels.config import cache_dir
from nels.encoders.audioset import load_audioset_vocabulary, load_links, union_vocabulary
from nels.encoders.concepts import ConceptSpace, prefer_specific
from nels.encoders.text import ClassText, LabelSpace, Vocabulary, load_vocabulary
from nels.search import linguistic

HOP, WIN, SR = 7680, 15600, 16000


def windows_cache() -> list[dict]:
    """YAMNet's reference windows and NELS's segments of every ESC-50 clip (cached: ~1 min of YAMNet)."""
    f = cache_dir() / "bench" / "yamnet-esc50-windows.pkl"
    if f.exists():
        return pickle.loads(f.read_bytes())
    from nels.audio.decode import decode
    from nels.encoders.base import encode_waveform
    from nels.encoders.registry import create_encoder
    from nels.training.datasets import load_dataset

    ds = load_dataset(str(esc50()), "esc50")
    enc = create_encoder("yamnet")
    out = []
    for it in ds.items:
        x = decode(str(it.path), sr=SR)
        w = enc.encode_windows(x, SR)
        s = encode_waveform(enc, x, SR, whole_if_empty=True)
        out.append({"fold": it.fold, "label": ds.labels[it.label], "wprobs": w.probs.astype(np.float16),
                    "seg_probs": s.probs, "sstarts": s.starts, "sends": s.ends})
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_bytes(pickle.dumps(out))
    return out


def pooled(rec: dict, how: str) -> np.ndarray:
    if how == "segment mean":
        return rec["seg_probs"]
    w = rec["wprobs"].astype(np.float32)
    if how == "clip max":
        return w.max(axis=0, keepdims=True)
    if how == "clip mean":
        return w.mean(axis=0, keepdims=True)
    ks = np.arange(len(w)) * HOP
    rows = []
    for s, e, sp in zip(rec["sstarts"], rec["sends"], rec["seg_probs"]):
        inside = (ks >= round(s * SR)) & (ks + WIN <= round(e * SR))
        rows.append(w[inside].max(axis=0) if inside.any() else sp)
    return np.stack(rows)


class Study:
    def __init__(self, recs, folds):
        self.recs, self.folds, self._data = recs, folds, {}

    def data(self, fold, how):
        if (fold, how) not in self._data:
            rs = [r for r in self.recs if r["fold"] == fold]
            ps = [pooled(r, how) for r in rs]
            idx = np.repeat(np.arange(len(rs)), [len(p) for p in ps])
            self._data[fold, how] = (np.concatenate(ps).astype(np.float32), idx, np.array([r["label"] for r in rs]))
        return self._data[fold, how]

    def map(self, sims, members, queries, how="segment mean", top=3, temp=0.05) -> float:
        W = linguistic.label_weights(sims, temperature=temp, top=top)
        per_fold = []
        for f in self.folds:
            P, idx, lab = self.data(f, how)
            aps = []
            for i, (_, rel) in enumerate(queries):
                s = linguistic.score(W[i], P, members)
                cs = np.zeros(len(lab), np.float32)
                np.maximum.at(cs, idx, s)
                order = np.argsort(-cs, kind="stable")
                r = (lab[order] == rel) & (cs[order] > 0)  # search drops rows with score 0
                if (lab == rel).any():
                    hits = np.cumsum(r)
                    aps.append(float((hits[r] / (np.flatnonzero(r) + 1)).sum() / (lab == rel).sum()))
            per_fold.append(np.mean(aps))
        return round(float(np.mean(per_fold)), 4)


def yamnet_labels() -> list[str]:
    from nels.encoders.yamnet import _class_map

    return [r["display_name"] for r in _class_map()]


def spaces(labels, esc=None) -> dict:
    """The label spaces compared (`esc`: the ESC-50 vocabulary to use, default the shipped one)."""
    aud = load_audioset_vocabulary()
    esc = esc if esc is not None else load_vocabulary()

    def now(e, audioset_only=False):
        return ConceptSpace(labels, union_vocabulary([aud, aud] + ([] if audioset_only else [e]),
                                                     links=None if audioset_only else load_links()))
    names = Vocabulary(classes={l: ClassText(name=l, description="", synonyms=()) for l in labels})
    return {"names only (reference)": LabelSpace(labels, names),
            "own (AudioSet, no hierarchy)": ConceptSpace(labels, aud, hierarchy=False),
            "AudioSet + hierarchy": now(esc, audioset_only=True),
            "shipped (AudioSet + ESC-50 + hierarchy)": now(esc),
            "shipped, ESC-50 synonyms removed": now(replace(esc, classes={k: replace(c, synonyms=())
                                                                          for k, c in esc.classes.items()})),
            "shipped, ESC-50 names only": now(replace(esc, classes={k: replace(c, synonyms=(), description="")
                                                                    for k, c in esc.classes.items()}))}


def sims_of(space, texts, penalty: float = 0.0):
    vec = space.encoder.encode(texts)
    if not penalty or not isinstance(space, ConceptSpace):
        s, _ = space.similarity(vec)
        return s, getattr(space, "members", None)
    audioset = set(load_audioset_vocabulary().classes) | set(space.labels)
    pen = np.array([0.0 if c in audioset else penalty for c in space.concepts], np.float32)
    s, _ = space.space.similarity(vec)
    s = np.maximum.reduceat((s - pen)[:, space._order], space._starts, axis=1)
    return prefer_specific(s, space.narrower), space.members


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--folds", type=int, nargs="+", default=[2, 3, 4, 5])
    ap.add_argument("--json")
    args = ap.parse_args()
    t0 = time.time()
    study = Study(windows_cache(), args.folds)
    labels = yamnet_labels()
    voc = load_vocabulary()
    classes = sorted(voc.classes)
    phr = json.loads((ROOT / "nels" / "data" / "joint_phrases.json").read_text())["classes"]
    rng = random.Random(0)

    def phrasings(cs):
        out = []
        for c in cs:
            ps = list(phr.get(c, []))
            rng.shuffle(ps)
            out += [(p, c) for p in ps[:4]]
        return out
    Q = {"ESC-50 names": [(voc.name(c), c) for c in classes], "joint phrasings": phrasings(classes),
         "AudioSet names": [(a, c) for c in classes for a in load_links().get(c, ())]}
    draws = []
    r2 = random.Random(1)
    for _ in range(2):
        cs = classes[:]
        r2.shuffle(cs)
        out = sorted(cs[:25])
        draws.append((out, replace(voc, classes={k: c for k, c in voc.classes.items() if k not in out}),
                      [(voc.name(c), c) for c in out] + phrasings(out)))
    base = spaces(labels)
    draw_spaces = [spaces(labels, esc) for _, esc, _ in draws]
    res = {"folds": args.folds, "label space x pooling": {}, "weights": {}, "borrowed penalty": {}}

    def row(name, how="segment mean", top=3, temp=0.05, penalty=0.0):
        out = {q: study.map(*sims_of(base[name], [t for t, _ in qs], penalty), qs, how, top, temp)
               for q, qs in Q.items()}
        out["open vocabulary (classes left out)"] = round(float(np.mean(
            [study.map(*sims_of(ds[name], [t for t, _ in qs], penalty), qs, how, top, temp)
             for ds, (_, _, qs) in zip(draw_spaces, draws)])), 4)
        return out
    for how in ("segment mean", "segment max", "clip max", "clip mean"):
        for name in base:
            res["label space x pooling"][f"{how} | {name}"] = r = row(name, how)
            print(f"{how:13s} {name:42s} " + "  ".join(f"{k} {v:.3f}" for k, v in r.items()), flush=True)
    shipped = "shipped (AudioSet + ESC-50 + hierarchy)"
    for top in (1, 2, 3, 5, 8):
        for temp in (0.03, 0.05, 0.08):
            res["weights"][f"top {top} temperature {temp}"] = r = row(shipped, top=top, temp=temp)
            print(f"top {top} temperature {temp}: " + "  ".join(f"{k} {v:.3f}" for k, v in r.items()), flush=True)
    for pen in (0.0, 0.05, 0.1, 0.2):
        res["borrowed penalty"][str(pen)] = r = row(shipped, penalty=pen)
        print(f"ESC-50 concepts' similarity - {pen}: " + "  ".join(f"{k} {v:.3f}" for k, v in r.items()), flush=True)
    res["seconds"] = round(time.time() - t0)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
