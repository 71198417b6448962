"""The parts of bench/fit_calibration.py that need audio and models (run through it: `fit_calibration.py audio`).

audio      whether some class explains a query sound: per classifier kind, the query's largest class probability
           (as search computes it: the mean over the clip's windows) on ESC-50 fold-2 clips (explained) vs sounds
           synthesised here (tones, chords, sweeps, noises, click trains, AM/FM tones: no ESC-50 class). The CNN
           is one trained without fold 2 (--cnn, default /tmp/h1/cnn-fold2: `nels train --exclude-fold 2`), so
           its probabilities are those of unseen clips; YAMNet never saw ESC-50 training folds. Threshold: best
           balanced accuracy. Checked on ESC-50 fold 1 with the shipped CNN and on another synthetic draw.
relevance  a logistic model per set of modes, from each result's per-mode scores to relevant (same ESC-50 class),
           on a fold-2 library indexed by that CNN (+ its joint space, `nels train-joint --exclude-fold 2`) and by
           YAMNet: text queries = ESC-50 class names, vocabulary synonyms and joint training phrasings; audio
           queries = every clip. Also per-mode models (the fallback).
audio-study  whether the entropy or the top-2 margin of the class probabilities says "no class explains this"
           better than the largest probability (same sounds as `audio`), and what YAMNet names the synthetic sounds
report     reliability of `relevance` on fold 1 with the shipped models (class names, fold 1's paraphrases,
           audio): per 10 bins mean relevance vs share relevant, ECE, Brier; and mAP of the fused ranking by
           reciprocal rank (today) vs by relevance (the fitted fusion), both from the same result lists.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from common import ROOT, esc50

from nels.search import calibration as cal

DATA = ROOT / "nels" / "data"
WORK = Path("/tmp/h1/calib")


# -- synthetic sounds no ESC-50 class describes ------------------------------------------------------------
def synth_sounds(n: int, seed: int, sr: int = 16000, seconds: float = 3.0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    out = []
    for i in range(n):
        kind = i % 8
        f = float(np.exp(rng.uniform(np.log(80), np.log(6000))))
        if kind == 0:  # pure tone
            x = np.sin(2 * np.pi * f * t)
        elif kind == 1:  # chord
            x = sum(np.sin(2 * np.pi * f * r * t) for r in (1, 1.26, 1.5, 2.0)[: rng.integers(2, 5)])
        elif kind == 2:  # sweep
            f2 = float(np.exp(rng.uniform(np.log(80), np.log(7000))))
            x = np.sin(2 * np.pi * np.cumsum(np.geomspace(f, f2, t.size)) / sr)
        elif kind == 3:  # white noise
            x = rng.standard_normal(t.size)
        elif kind == 4:  # coloured noise (1/f^a)
            spec = np.fft.rfft(rng.standard_normal(t.size))
            fr = np.maximum(np.fft.rfftfreq(t.size, 1 / sr), 1.0)
            x = np.fft.irfft(spec / fr ** rng.uniform(0.5, 2.0), n=t.size)
        elif kind == 5:  # click train
            x = np.zeros(t.size)
            x[:: int(sr / rng.uniform(2, 40))] = 1.0
        elif kind == 6:  # amplitude-modulated tone
            x = np.sin(2 * np.pi * f * t) * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.5, 30) * t))
        else:  # frequency-modulated tone
            x = np.sin(2 * np.pi * f * t + rng.uniform(1, 50) * np.sin(2 * np.pi * rng.uniform(0.5, 10) * t))
        x = x / (np.abs(x).max() + 1e-9) * rng.uniform(0.1, 0.8)
        out.append(x.astype(np.float32))
    return out


def top_prob(enc, x: np.ndarray, sr: int) -> float:
    from nels.search.query import encode_query_audio

    _, probs = encode_query_audio(enc, x, sr)
    c = probs.shape[-1]
    return (float(np.max(probs)) - 1.0 / c) / (1.0 - 1.0 / c)  # above chance, as nels.search.coverage reads it


def prob_entropy(enc, x: np.ndarray, sr: int) -> float:
    from nels.search.coverage import normalised_entropy
    from nels.search.query import encode_query_audio

    return normalised_entropy(encode_query_audio(enc, x, sr)[1])


def esc50_items(fold: int):
    from nels.training.datasets import load_dataset

    ds = load_dataset(str(esc50()), "esc50")
    return ds, [it for it in ds.items if it.fold == fold]


def audio_features(enc, fold: int, seed: int, n_synth: int = 120, per_class: int = 3, feature=top_prob):
    """`feature` (largest class probability above chance, or `prob_entropy`) of `per_class` clips per ESC-50
    class of `fold`, and of `n_synth` synthesised sounds (seeded)."""
    from nels.audio.decode import decode

    _, items = esc50_items(fold)
    seen = Counter()
    items = [it for it in items if (seen.update([it.label]) or seen[it.label] <= per_class)]
    pos = [feature(enc, decode(str(it.path), sr=16000), 16000) for it in items]
    neg = [feature(enc, x, 16000) for x in synth_sounds(n_synth, seed)]
    return np.array(pos), np.array(neg)


def fit_audio(args) -> dict:
    from sklearn.linear_model import LogisticRegression

    from fit_calibration import balanced_threshold
    from nels.encoders.base import create_encoder
    from nels.search.coverage import sigmoid

    out = {}
    for kind, spec, check_spec in (("softmax", f"cnn:{args.cnn}", "default"), ("yamnet", "yamnet", "yamnet")):
        t0 = time.time()
        # softmax classifiers: the normalised entropy of the class probabilities (`audio-study` chose it on
        # these fitted sounds: ROC AUC 0.630 vs 0.608 for the largest probability); YAMNet: the largest
        feature = prob_entropy if kind == "softmax" else top_prob
        pos, neg = audio_features(create_encoder(spec), 2, seed=0, feature=feature)
        print(f"{kind}: fitted sounds in {time.time() - t0:.0f} s", file=sys.stderr)
        X = np.concatenate([pos, neg])[:, None]
        y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
        lr = LogisticRegression(C=10.0, class_weight="balanced").fit(X, y)
        w, b = float(lr.coef_[0][0]), float(lr.intercept_[0])
        p = np.array([sigmoid(b + w * v) for v in X[:, 0]])
        thr = balanced_threshold(p, y.astype(int))
        cpos, cneg = audio_features(create_encoder(check_spec), 1, seed=1, feature=feature)
        pp = np.array([sigmoid(b + w * v) for v in cpos])
        pn = np.array([sigmoid(b + w * v) for v in cneg])
        out[kind] = {
            "weights": [round(w, 4)], "bias": round(b, 4), "threshold": round(thr, 4),
            "feature": "entropy" if feature is prob_entropy else "above_chance",
            "feature_at_threshold": round(float((np.log(thr / (1 - thr)) - b) / w), 4) if w else None,
            "fitted_on": f"{len(pos)} ESC-50 fold-2 clips ({spec}) vs {len(neg)} synthesised sounds (seed 0)",
            "fit": {"esc50_flagged": round(float(np.mean(p[y == 1] < thr)), 4),
                    "synthetic_explained": round(float(np.mean(p[y == 0] >= thr)), 4)},
            "check": {"model": check_spec, "esc50_fold1_flagged": round(float(np.mean(pp < thr)), 4),
                      "synthetic_seed1_explained": round(float(np.mean(pn >= thr)), 4)},
            "feature_median": {"esc50_fold2": round(float(np.median(pos)), 4),
                                "synthetic": round(float(np.median(neg)), 4)},
        }
        if (w <= 0) if feature is top_prob else (w >= 0):  # reversed: this kind of classifier is surer of the synthetic sounds (YAMNet: it has classes
            out[f"{kind}_not_used"] = out.pop(kind)  # for them); search then never flags its queries
        print(kind, out.get(kind) or out[f"{kind}_not_used"], f"{time.time() - t0:.0f} s", file=sys.stderr)
    out["features"] = {"above_chance": "largest class probability of the query (mean over its windows) above"
                                       " chance: (p - 1/C) / (1 - 1/C)",
                       "entropy": "normalised entropy of the query's class probabilities (mean over its windows):"
                                  " -sum p log p / log C"}
    out["threshold_rule"] = "best balanced accuracy on the fitted sounds"
    out["date"] = time.strftime("%Y-%m-%d")
    return out


def class_probs(enc, x: np.ndarray, sr: int) -> np.ndarray:
    from nels.search.query import encode_query_audio

    return encode_query_audio(enc, x, sr)[1]


def prob_features(P: np.ndarray) -> np.ndarray:
    """Per row of class probabilities: the largest above chance (what search uses), the normalised entropy
    and the margin between the two largest."""
    P = np.clip(np.asarray(P, dtype=np.float64), 1e-9, 1.0)
    c = P.shape[1]
    top = np.sort(P, axis=1)
    return np.stack([(top[:, -1] - 1.0 / c) / (1.0 - 1.0 / c), -(P * np.log(P)).sum(1) / np.log(c),
                     top[:, -1] - top[:, -2]], axis=1)


SYNTHETIC_CLASSES = {"Sine wave", "Synthesizer", "Static", "Pink noise", "White noise", "Noise", "Chirp tone",
                     "Beep, bleep", "Sound effect", "Silence", "Theremin", "Hum", "Buzz", "Dial tone", "Busy signal",
                     "Harmonic", "Electronic music", "Tick", "Click", "Pulse", "Whoosh, swoosh, swish", "Buzzer"}


def study_audio(args) -> dict:
    """Can the class probabilities alone say "no class explains this sound" better than the largest one?
    Same sounds as `fit_audio` (fit: ESC-50 fold-2 clips through the CNN trained without fold 2 vs synthetic
    seed 0; check: fold 1 through the shipped CNN vs seed 1). And what YAMNet names the synthetic sounds."""
    from collections import Counter

    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from fit_calibration import balanced_threshold
    from nels.audio.decode import decode
    from nels.encoders.base import create_encoder

    def probs(enc, fold, seed, per_class=3):
        _, items = esc50_items(fold)
        seen = Counter()
        items = [it for it in items if (seen.update([it.label]) or seen[it.label] <= per_class)]
        pos = np.stack([class_probs(enc, decode(str(it.path), sr=16000), 16000) for it in items])
        neg = np.stack([class_probs(enc, x, 16000) for x in synth_sounds(120, seed)])
        return pos, neg

    out = {}
    pos, neg = probs(create_encoder(f"cnn:{args.cnn}"), 2, 0)
    cpos, cneg = probs(create_encoder("default"), 1, 1)
    names = ["largest above chance", "normalised entropy", "top-2 margin"]
    for cols in ([0], [1], [2], [0, 1], [0, 1, 2]):
        X = np.concatenate([prob_features(pos), prob_features(neg)])[:, cols]
        y = np.r_[np.ones(len(pos)), np.zeros(len(neg))].astype(int)
        lr = LogisticRegression(C=10.0, class_weight="balanced", max_iter=1000).fit(X, y)
        p = lr.predict_proba(X)[:, 1]
        thr = balanced_threshold(p, y)
        pc = lr.predict_proba(prob_features(cpos)[:, cols])[:, 1]
        pn = lr.predict_proba(prob_features(cneg)[:, cols])[:, 1]
        out[" + ".join(names[c] for c in cols)] = {
            "fit AUC": round(float(roc_auc_score(y, p)), 3),
            "fit: ESC-50 flagged": round(float(np.mean(p[y == 1] < thr)), 3),
            "fit: synthetic flagged": round(float(np.mean(p[y == 0] < thr)), 3),
            "check AUC": round(float(roc_auc_score(np.r_[np.ones(len(pc)), np.zeros(len(pn))], np.r_[pc, pn])), 3),
            "check: fold-1 flagged": round(float(np.mean(pc < thr)), 3),
            "check: synthetic flagged": round(float(np.mean(pn < thr)), 3)}
    yam = create_encoder("yamnet")
    labels = list(yam.labels)
    top = [labels[int(np.argmax(class_probs(yam, x, 16000)))] for s in (0, 1) for x in synth_sounds(120, s)]
    out["yamnet: top class of 240 synthetic sounds"] = dict(Counter(top).most_common(12))
    out["yamnet: share whose top class is a class for synthetic sounds"] = round(
        float(np.mean([t in SYNTHETIC_CLASSES for t in top])), 3)
    out["date"] = time.strftime("%Y-%m-%d")
    return out


# -- relevance ---------------------------------------------------------------------------------------------
def fold_library(spec: str, fold: int, name: str):
    from nels.evaluate.retrieval import build_fold_library

    return build_fold_library(str(esc50()), "esc50", fold, spec, WORK / name)


def text_queries_fit(labels, seed: int = 0):
    from nels.encoders.text import load_vocabulary

    voc = load_vocabulary()
    rng = random.Random(seed)
    phrases = json.loads((DATA / "joint_phrases.json").read_text())["classes"]
    out = []
    for l in labels:
        ct = voc.get(l)
        out += [(ct.name, l)] + [(s, l) for s in ct.synonyms[:2]]
        out += [(p, l) for p in rng.sample(phrases.get(l, []), min(2, len(phrases.get(l, []))))]
    return out


def collect(lib, truth, text_queries, modes_text, modes_audio, audio_limit=None):
    """Rows of (config key, {feature: raw score}, relevant, query id, rank score, relevance now) for every
    result of every query, every mode: what the relevance model is fitted on (and measured with)."""
    from nels.search.query import search

    n = len(truth)
    rows = []
    qid = 0
    for mode in modes_text:
        for text, label in text_queries:
            res = search(lib, text=text, mode=mode, k=n, log_weak=False)
            qid += 1
            rows += _rows(res, lambda r: truth.get(r["clip_id"]) == label, qid, f"text/{mode}", None)
    clips = lib.catalogue.clips(("id", "media_path"))
    for mode in modes_audio:
        for cid, media in clips[:audio_limit]:
            label = truth.get(cid)
            if label is None:
                continue
            res = search(lib, audio=lib.path / media, mode=mode, k=n, log_weak=False)
            qid += 1
            rows += _rows(res, lambda r, label=label: truth.get(r["clip_id"]) == label, qid, f"audio/{mode}", cid)
    return rows


def _rows(res, is_rel, qid, what, skip):
    out = []
    for r, values in zip(res, res.features):
        if r["clip_id"] == skip:
            continue
        out.append({"what": what, "q": qid, "rel": bool(is_rel(r)), "score": r["score"], "relevance": r["relevance"],
                    "values": values})
    return out


def fit_models(rows, C: float = 1.0) -> dict:
    """A logistic model for every non-empty subset S of the feature sets the rows hold, fitted on every row whose
    features include S (a library with fewer modes or models sees a subset), and one per feature (the fallback)."""
    from itertools import combinations

    from sklearn.linear_model import LogisticRegression

    sets = {frozenset(r["values"]) for r in rows}
    subsets = {frozenset(c) for fs in sets for k in range(1, len(fs) + 1) for c in combinations(sorted(fs), k)}
    models, single = {}, {}
    for sub in sorted(subsets, key=lambda x: (len(x), sorted(x))):
        feats = sorted(sub)
        rs = [r for r in rows if sub <= set(r["values"])]
        X = np.array([[cal.transform(f.split(":")[0], r["values"][f]) for f in feats] for r in rs])
        y = np.array([r["rel"] for r in rs])
        if y.all() or not y.any():
            continue
        lr = LogisticRegression(C=C, max_iter=2000).fit(X, y)
        w = {f: round(float(v), 4) for f, v in zip(feats, lr.coef_[0])}
        models[cal.config_key(feats)] = {"weights": w, "bias": round(float(lr.intercept_[0]), 4), "n": len(rs),
                                         "relevant": int(y.sum())}
        if len(feats) == 1:
            single[feats[0]] = {"weight": w[feats[0]], "bias": models[cal.config_key(feats)]["bias"]}
    return {"models": models, "single": single}


def fit_relevance(args) -> dict:
    """Rows of the fused mode on fold-2 libraries (the CNN trained without fold 2 with its joint space; the same
    CNN with YAMNet): each result holds every feature of its library (a mode that did not list it gives its fill
    value), so the rows fit every subset of modes."""
    from nels.search.joint import library_has_joint

    rows = []
    libs = [(f"cnn:{args.cnn}+yamnet", "fold2-cnn-yamnet")]
    if (Path(args.cnn) / "joint").exists():
        libs.insert(0, (f"cnn:{args.cnn}", "fold2-cnn"))
    else:
        print(f"{args.cnn}/joint missing: the joint space's modes are not fitted", file=sys.stderr)
    for spec, name in libs:
        t0 = time.time()
        lib, truth = fold_library(spec, 2, name)
        labels = sorted(set(truth.values()))
        print(f"{spec}: library ready, joint {library_has_joint(lib)}, {time.time() - t0:.0f} s", file=sys.stderr)
        got = collect(lib, truth, text_queries_fit(labels), ["fused"], ["fused"], audio_limit=args.audio_queries)
        for r in got:
            r["library"] = name
        rows += got
        print(f"{len(got)} result rows, {time.time() - t0:.0f} s", file=sys.stderr)
    fitted = fit_models(rows)
    # fusion by the fitted model instead of reciprocal rank: chosen here, on these validation queries
    choice = {}
    for name in ("fold2-cnn", "fold2-cnn-yamnet"):
        for kind in ("text", "audio"):
            rs = [r for r in rows if r["what"].startswith(kind) and r["library"] == name]
            feats = sorted({f for r in rs for f in r["values"]})
            model = fitted["models"].get(cal.config_key(feats))
            if not rs or model is None or len(feats) < 2:
                continue
            for r in rs:
                r["fitted"] = cal.relevance({f: r["values"].get(f, 0.0) for f in feats}, model)
            choice[f"{name} {kind}"] = {"mAP by reciprocal rank": mean_ap(rs, "score"),
                                        "mAP by relevance": mean_ap(rs, "fitted")}
    fitted["fusion_on_validation"] = choice
    fitted["fuse_by_relevance"] = {  # a kind of query is fused by relevance when that wins on every library
        kind: bool(all(v["mAP by relevance"] > v["mAP by reciprocal rank"] for k, v in choice.items()
                       if k.endswith(kind)) and any(k.endswith(kind) for k in choice)) for kind in ("text", "audio")}
    fitted.update(fitted_on=f"ESC-50 fold 2, libraries {', '.join(s for s, _ in libs)} (a CNN, and its joint space"
                            " where present, trained without fold 2; YAMNet),"
                            " fused mode: class names, 2 synonyms and 2 joint training phrasings per class as text"
                            f" queries, {args.audio_queries} clips as audio queries; relevant = same class",
                  rows=len(rows), date=time.strftime("%Y-%m-%d"))
    return fitted


def reliability(rel: np.ndarray, y: np.ndarray, bins: int = 10) -> dict:
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(rel, edges) - 1, 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            table.append([round(float(edges[b]), 1), int(m.sum()), round(float(rel[m].mean()), 4), round(float(y[m].mean()), 4)])
            ece += m.mean() * abs(rel[m].mean() - y[m].mean())
    return {"ece": round(float(ece), 4), "brier": round(float(np.mean((rel - y) ** 2)), 4),
            "bins [from, n, mean relevance, share relevant]": table}


def mean_ap(rows, key: str) -> float:
    from nels.metrics import average_precision

    by = defaultdict(list)
    for r in rows:
        by[r["q"]].append(r)
    aps = []
    for rs in by.values():
        total = sum(r["rel"] for r in rs)
        if total == 0:
            continue
        order = sorted(rs, key=lambda r: -r[key])
        aps.append(average_precision([r["rel"] for r in order], total))
    return round(float(np.mean(aps)), 4)


def _relevance_now(rows) -> None:
    """Each row's relevance from its features with the calibration file as it is now (the rows may have been
    collected before the fit)."""
    from nels.search.coverage import calibration

    calibration.cache_clear()
    for r in rows:
        feats = sorted(r["values"])
        model, _ = cal.relevance_model(feats)
        r["relevance"] = cal.relevance(r["values"], model)


def _cached_rows(key: str, make):
    f = WORK / f"report-{key}.json"
    if f.exists():
        return json.loads(f.read_text())
    rows = make()
    f.write_text(json.dumps(rows))
    return rows


def report(args) -> dict:
    """Fold 1, shipped models: reliability of relevance and mAP by score vs by relevance. Result rows are kept
    in /tmp/h1/calib/report-*.json, so the report can be collected before the fit and recomputed after it."""
    from nels.evaluate.retrieval import class_queries, paraphrase_queries

    out = {}
    for spec, name in (("default", "fold1-default"), ("default+yamnet", "fold1-default-yamnet")):
        if args.only and spec != args.only:
            continue
        lib, truth = fold_library(spec, 1, name)
        labels = sorted(set(truth.values()))
        sets = {"names": class_queries(labels), "paraphrases": paraphrase_queries(labels)}
        res = {}
        runs = [(f"text {w} / {m}", (lambda qs=qs, m=m: collect(lib, truth, qs, [m], [])))
                for w, qs in sets.items() for m in ("linguistic", "fused")]
        runs += [(f"audio / {m}", (lambda m=m: collect(lib, truth, [], [], [m], audio_limit=args.audio_queries)))
                 for m in ("acoustic", "fused")]
        for what, make in runs:
            rows = _cached_rows(f"{name}-{what.replace(' ', '').replace('/', '-')}", make)
            _relevance_now(rows)
            rel = np.array([r["relevance"] for r in rows])
            y = np.array([r["rel"] for r in rows], dtype=float)
            res[what] = {"reliability": reliability(rel, y), "mAP by score": mean_ap(rows, "score"),
                         "mAP by relevance": mean_ap(rows, "relevance")}
            print(spec, what, json.dumps(res[what]), file=sys.stderr)
        out[spec] = res
    out["date"] = time.strftime("%Y-%m-%d")
    out["note"] = ("ESC-50 fold 1, shipped models; mAP here ranks each query's per-clip results (every clip) by"
                   " the score the search sorted by, or by relevance; `nels evaluate retrieval` is the reference")
    return out


def main(part: str, argv, write_section) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cnn", default="/tmp/h1/cnn-fold2", help="a CNN trained without fold 2 (with joint/)")
    ap.add_argument("--audio-queries", type=int, default=120, help="at most this many clips as audio queries")
    ap.add_argument("--only", default=None, help="report: only this library spec (default, default+yamnet)")
    args = ap.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    if part == "audio":
        write_section("audio_coverage", fit_audio(args))
    elif part == "audio-study":
        print(json.dumps(study_audio(args), indent=1))
    elif part == "relevance":
        write_section("relevance", fit_relevance(args))
    elif part == "report":
        out = report(args)
        if not args.only:
            write_section("relevance_report", out)
        print(json.dumps(out, indent=1))
