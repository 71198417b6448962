"""Fit what makes search honest and readable, on validation data only, and write nels/data/calibration.json.

    python3 bench/fit_calibration.py text       # vocabulary coverage of text queries (no audio needed)
    python3 bench/fit_calibration.py text-joint-study  # would the joint space's confidence help? (prints only)
    python3 bench/fit_calibration.py audio      # whether some class explains a query sound
    python3 bench/fit_calibration.py audio-study  # could the class probabilities say it better? (prints only)
    python3 bench/fit_calibration.py audio-embedding-study  # could the CNN's embeddings say it better? (prints)
    python3 bench/fit_calibration.py audio-embedding  # the shipped CNN's entropy + embedding-norm signal
    python3 bench/fit_calibration.py relevance  # one calibrated relevance per result, from the per-mode scores
    python3 bench/fit_calibration.py report     # reliability of `relevance` on ESC-50 fold 1 (never fitted on)

Never fitted on ESC-50 fold 1 (the report fold), on nels/data/eval/ (fold 1's held-out queries), or on
realworld-dev. Each part rewrites its own section of the JSON file and keeps the others; scikit-learn
(bench only) fits the models, nels.search applies them with plain arithmetic.

text: per classifier kind (the ESC-50 CNN's 50 labels; YAMNet's 521), queries that the model's classes cover
(ESC-50 class names and synonyms, the joint space's training phrasings nels/data/joint_phrases*.json, each
compared with the other phrasings only, AudioSet classes the model covers: `coverage.covered_concepts`)
against queries they do not (AudioSet classes it does not cover, generated gibberish, words that name no
sound). Features: `nels.search.coverage.text_features`. Split by class (and by item for gibberish) 80/20
with a fixed seed: fitted on 80 %, measured on 20 %; also measured, per library (the CNN alone; the CNN and
YAMNet), on fold 1's paraphrases, the independent paraphrases and out-of-vocabulary wordings (all describe
ESC-50 classes) and on AudioSet names no model of the library covers and fresh gibberish.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import random
import string
import sys
import time

import numpy as np

from common import ROOT  # noqa: F401 - puts the repository on sys.path

from nels.search import coverage
from nels.search.coverage import (CALIBRATION, known_space, model_text_features, text_coverage_probability,
                                  text_features)

DATA = ROOT / "nels" / "data"

EMPTY_MEANING = [
    "the", "a", "and", "of", "it", "this", "that", "something", "anything", "nothing", "stuff", "thing", "things",
    "whatever", "hello", "hello world", "hi there", "test", "testing", "test query", "foo", "bar", "foo bar baz",
    "lorem ipsum", "lorem ipsum dolor sit amet", "asdf", "qwerty", "asdfgh qwerty", "zxcvbn", "hjkl", "123",
    "42", "0000", "xyz", "abc", "abc def", "n/a", "none", "null", "undefined", "todo", "what is this",
    "i don't know", "please help", "search", "query", "example", "yes", "no", "maybe", "ok", "blah blah",
    "etc", "misc", "untitled", "new file", "final version 2", "my document", "login", "password",
    "tax law", "a lecture on medieval tax law", "quarterly earnings report", "recipe for lasagna",
    "the capital of france", "mathematics homework", "blue", "happiness", "justice", "democracy",
]


def gibberish(n: int, seed: int = 0) -> list[str]:
    """Random letter strings, keyboard mashes and pronounceable nonsense words (fixed seed)."""
    rng = random.Random(seed)
    rows = ["qwertyuiop", "asdfghjkl", "zxcvbnm"]
    cons, vows = "bcdfghjklmnprstvwz", "aeiou"
    out = []
    while len(out) < n:
        kind = len(out) % 3
        words = []
        for _ in range(rng.choice([1, 1, 2, 3])):
            if kind == 0:
                words.append("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 10))))
            elif kind == 1:
                r = rng.choice(rows)
                a = rng.randint(0, len(r) - 3)
                words.append(r[a:a + rng.randint(3, len(r) - a)])
            else:
                words.append("".join(rng.choice(cons) + rng.choice(vows) for _ in range(rng.randint(2, 4))))
        out.append(" ".join(words))
    return out


def in_fit(group: str, share: float = 0.8) -> bool:
    """Whether a query's group (its class, or the query itself) is in the fitting 80 % (stable hash)."""
    return int(hashlib.sha256(group.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < share


def model_specs() -> list[tuple[str, list[str], str | None]]:
    from nels.encoders.audioset import AUDIOSET_VOCABULARY
    from nels.encoders.text import load_vocabulary

    yam = [r["display_name"] for r in csv.DictReader(open(DATA / "yamnet_class_map.csv", encoding="utf-8"))]
    return [("cnn", list(load_vocabulary().classes), None), ("yamnet", yam, str(AUDIOSET_VOCABULARY))]


def phrasing_queries() -> list[tuple[str, str]]:
    """(phrasing, its ESC-50 class) of the joint space's training phrasings (nels/data/joint_phrases*.json)."""
    texts, owners = coverage._phrasing_texts()
    return list(zip(texts, owners))


def text_queries(labels: list[str], vocabulary: str | None, seed: int = 0):
    """(text, covered 0/1, group, source, leave_out) for one classifier's label set: ESC-50 names and
    synonyms, every training phrasing (compared with the other phrasings only: leave_out), AudioSet class
    names (covered when `coverage.covered_concepts` says so), gibberish and empty-meaning words."""
    from nels.encoders.audioset import load_audioset_vocabulary
    from nels.encoders.text import load_vocabulary
    from nels.search.query import label_space

    space = label_space(labels, vocabulary)
    kept = set(space.concepts)
    inside = coverage.covered_concepts(space)
    out = []
    esc = load_vocabulary()
    for label, ct in esc.classes.items():
        ok = int(label in kept)
        for t in [ct.name, *ct.synonyms[:3]]:
            out.append((t, ok, f"esc50:{label}", "esc50 names", None))
    for t, label in phrasing_queries():
        out.append((t, int(label in kept), f"esc50:{label}", "esc50 phrasings", t))
    for label, ct in load_audioset_vocabulary().classes.items():
        out.append((ct.name, int(label in inside), f"audioset:{label}", "audioset names", None))
    for t in gibberish(300, seed):
        out.append((t, 0, f"gib:{t}", "gibberish", None))
    for t in EMPTY_MEANING:
        out.append((t, 0, f"empty:{t}", "empty meaning", None))
    return space, out


def features(space, texts: list[str], vocabulary: str | None, leave_out: list[str | None] | None = None,
             raw: bool = False):
    """The coverage model's inputs for `texts` (rows of text_features), or with raw the three similarities."""
    ks = known_space(vocabulary)
    X = []
    for i in range(0, len(texts), 256):
        chunk = texts[i:i + 256]
        vecs = space.encoder.encode(chunk)
        sims, _ = space.similarity(vecs)
        ksims, _ = ks.similarity(vecs)
        for j in range(len(chunk)):
            lo = leave_out[i + j] if leave_out is not None else None
            f = model_text_features(space, sims[j], ksims[j], ks.labels, vecs[j], leave_out=lo)
            X.append((f["covered"], f["known"], f["phrasing"]) if raw else
                     text_features(f["covered"], f["known"], f["phrasing"]))
    return X if raw else np.asarray(X, dtype=np.float64)


def balanced_threshold(p: np.ndarray, y: np.ndarray) -> float:
    """The probability threshold with the best balanced accuracy (mean of the two classes' recalls)."""
    best, thr = -1.0, 0.5
    for t in np.unique(np.round(p, 4)):
        ba = 0.5 * (np.mean(p[y == 1] >= t) + np.mean(p[y == 0] < t))
        if ba > best:
            best, thr = ba, float(t)
    return thr


def rates(p, y, thr) -> dict:
    return {"n": int(len(y)), "covered_flagged": round(float(np.mean(p[y == 1] < thr)), 4) if (y == 1).any() else None,
            "uncovered_missed": round(float(np.mean(p[y == 0] >= thr)), 4) if (y == 0).any() else None,
            "balanced_accuracy": round(float(0.5 * (np.mean(p[y == 1] >= thr) + np.mean(p[y == 0] < thr))), 4)
            if (y == 1).any() and (y == 0).any() else None}


def library_checks(params: dict, thr: float) -> dict:
    """False notices and true out-of-vocabulary detection per library (the CNN alone; the CNN + YAMNet, as
    `nels demo` + `nels reindex --add yamnet` builds it: covered when either model covers the query), on
    queries never fitted on: fold 1's paraphrases, the independent paraphrases, the out-of-vocabulary
    wordings of ESC-50 classes (all covered by both models); AudioSet names no model of the library covers
    (held-out 20 % of classes, and all of them), the queries of issue 18, fresh gibberish (seed 1)."""
    from nels.encoders.audioset import load_audioset_vocabulary
    from nels.search.query import label_space

    def load(name):
        return [q["text"] for q in json.loads((DATA / "eval" / name).read_text())["queries"]]

    sets = {"fold-1 paraphrases": load("paraphrases.json"),
            "independent paraphrases": load("paraphrases_independent.json"),
            "out-of-vocabulary wordings of ESC-50 classes": load("oov.json")}
    audioset = list(load_audioset_vocabulary().classes)
    names = [load_audioset_vocabulary().classes[c].name for c in audioset]
    fresh = [t for t in gibberish(300, seed=1) if t not in set(gibberish(300, seed=0))]
    issue = ["guitar", "gunshot", "speech", "asdfgh qwerty", "dog barking", "glass breaking", "waves on a beach",
             "the miaow of a house pet"]
    probs, inside, kept = {}, {}, {}
    for kind, labels, vocab in model_specs():
        space = label_space(labels, vocab)
        inside[kind], kept[kind] = coverage.covered_concepts(space), set(space.concepts)
        for name, texts in [*sets.items(), ("audioset", names), ("gibberish", fresh), ("issue", issue)]:
            F = features(space, texts, vocab, raw=True)
            probs[(kind, name)] = np.array([text_coverage_probability(*f, params=params) for f in F])
    out = {}
    for lib, kinds in (("cnn", ["cnn"]), ("cnn+yamnet", ["cnn", "yamnet"])):
        def p(name):
            return np.max([probs[(k, name)] for k in kinds], axis=0)
        row = {f"{name}: false notices": round(float(np.mean(p(name) < thr)), 4) for name in sets}
        outside = np.array([not any(c in inside[k] for k in kinds) for c in audioset])
        not_kept = np.array([not any(c in kept[k] for k in kinds) for c in audioset])
        held = np.array([not in_fit(f"{kinds[0]}:audioset:{c}") for c in audioset])
        pa = p("audioset")
        row["AudioSet names no model covers, held-out classes: detected"] = \
            {"n": int((outside & held).sum()), "rate": round(float(np.mean(pa[outside & held] < thr)), 4)}
        row["AudioSet names no model covers, all: detected"] = \
            {"n": int(outside.sum()), "rate": round(float(np.mean(pa[outside] < thr)), 4)}
        row["AudioSet names outside the concept space (the old definition), all: detected"] = \
            {"n": int(not_kept.sum()), "rate": round(float(np.mean(pa[not_kept] < thr)), 4)}
        row["fresh gibberish (seed 1): detected"] = {"n": len(fresh), "rate": round(float(np.mean(p("gibberish") < thr)), 4)}
        row["issue 18 queries: P(covered)"] = {t: round(float(x), 3) for t, x in zip(issue, p("issue"))}
        out[lib] = row
    return out


def fit_text() -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    rows, Xs = [], []
    for kind, labels, vocab in model_specs():
        space, qs = text_queries(labels, vocab)
        t0 = time.time()
        X = features(space, [q[0] for q in qs], vocab, leave_out=[q[4] for q in qs])
        print(f"{kind}: {len(qs)} queries, features in {time.time() - t0:.0f} s", file=sys.stderr)
        rows += [(kind, *q) for q in qs]
        Xs.append(X)
    X = np.concatenate(Xs)
    y = np.array([r[2] for r in rows])
    fit = np.array([in_fit(f"{r[0]}:{r[3]}") for r in rows])
    lr = LogisticRegression(C=10.0, class_weight="balanced", max_iter=2000).fit(X[fit], y[fit])
    params = {"weights": [round(float(w), 4) for w in lr.coef_[0]], "bias": round(float(lr.intercept_[0]), 4)}
    p = np.array([coverage.sigmoid(params["bias"] + float(np.dot(params["weights"], x))) for x in X])
    params["threshold"] = round(balanced_threshold(p[fit], y[fit]), 4)
    thr = params["threshold"]
    held = {"all": rates(p[~fit], y[~fit], thr), "auc": round(float(roc_auc_score(y[~fit], p[~fit])), 4)}
    for kind in ("cnn", "yamnet"):
        for src in sorted({r[4] for r in rows}):
            m = ~fit & np.array([r[0] == kind and r[4] == src for r in rows])
            if m.any():
                held[f"{kind} / {src}"] = rates(p[m], y[m], thr)
    t0 = time.time()
    checks = library_checks(params, thr)
    print(f"checks in {time.time() - t0:.0f} s", file=sys.stderr)
    return {**params, "features": ["best similarity to a concept covering a model class",
                                   "max(0, best similarity to a vocabulary concept the model does not cover - that)",
                                   "max(0, best similarity to a training phrasing of a class it covers - that)"],
            "fitted_on": f"{int(fit.sum())} queries (80 % of classes / items): ESC-50 names and synonyms; the"
                         " joint space's training phrasings (nels/data/joint_phrases*.json, each compared with the"
                         " others only); AudioSet class names (covered: nels.search.coverage.covered_concepts);"
                         " gibberish; empty-meaning words; for the ESC-50 CNN's and YAMNet's label sets",
            "threshold_rule": "best balanced accuracy on the fitted queries",
            "held_out": held, "checks (never fitted on)": checks, "date": time.strftime("%Y-%m-%d")}


def study_joint() -> dict:
    """Would the joint space's confidence help as a fourth feature? CNN only (the joint space is its): the best
    cosine of the query's joint-space text vector to the joint space's phrase bank. Positives: the style
    phrasings (nels/data/joint_phrases_styles.json, which the shipped joint space was not trained on) and
    ESC-50 names; negatives as in `fit_text`; the same 80 % split. Fitted with and without it, measured on
    fold 1's and the independent paraphrases and on held-out uncovered AudioSet names. Prints only."""
    from sklearn.linear_model import LogisticRegression

    from nels.encoders.base import create_encoder
    from nels.encoders.joint import joint_encoder_for

    kind, labels, vocab = model_specs()[0]
    jenc = joint_encoder_for(create_encoder("default"))
    _, _, bank = jenc.phrase_bank()
    styles = {t for ps in json.loads((DATA / "joint_phrases_styles.json").read_text())["classes"].values() for t in ps}
    space, qs = text_queries(labels, vocab)
    qs = [q for q in qs if q[3] != "esc50 phrasings" or q[0] in styles]

    def joint_conf(texts):
        return (jenc.text(texts) @ bank.T).max(axis=1)

    X3 = features(space, [q[0] for q in qs], vocab, leave_out=[q[4] for q in qs])
    X4 = np.c_[X3, joint_conf([q[0] for q in qs])]
    y = np.array([q[1] for q in qs])
    fit = np.array([in_fit(f"{kind}:{q[2]}") for q in qs])

    def load(name):
        return [q["text"] for q in json.loads((DATA / "eval" / name).read_text())["queries"]]

    checks = {"fold-1 paraphrases": load("paraphrases.json"), "independent paraphrases": load("paraphrases_independent.json")}
    F3 = {k: features(space, v, vocab) for k, v in checks.items()}
    F4 = {k: np.c_[F3[k], joint_conf(v)] for k, v in checks.items()}
    audioset = np.array([q[3] == "audioset names" and q[1] == 0 for q in qs])
    out = {}
    for name, X, F in (("3 features", X3, F3), ("3 features + joint confidence", X4, F4)):
        lr = LogisticRegression(C=10.0, class_weight="balanced", max_iter=2000).fit(X[fit], y[fit])
        p = lr.predict_proba(X)[:, 1]
        thr = balanced_threshold(p[fit], y[fit])
        row = {f"{k}: false notices": round(float(np.mean(lr.predict_proba(F[k])[:, 1] < thr)), 4) for k in checks}
        row["uncovered AudioSet names, held out: detected"] = round(float(np.mean(p[audioset & ~fit] < thr)), 4)
        row["weights"] = [round(float(w), 3) for w in lr.coef_[0]]
        out[name] = row
    return out


def write_section(name: str, value: dict) -> None:
    cur = json.loads(CALIBRATION.read_text()) if CALIBRATION.exists() else {"version": 1}
    cur[name] = value
    cur["note"] = ("Fitted by bench/fit_calibration.py on validation data (never ESC-50 fold 1, nels/data/eval/ or"
                   " realworld-dev); applied by nels/search/coverage.py and nels/search/calibration.py.")
    CALIBRATION.write_text(json.dumps(cur, indent=1) + "\n")
    print(f"wrote {name} to {CALIBRATION}", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("part", choices=["text", "text-joint-study", "audio", "audio-study", "audio-embedding-study",
                                     "audio-embedding", "relevance", "report"])
    args, rest = ap.parse_known_args()
    if args.part == "text":
        out = fit_text()
        write_section("text_coverage", out)
        print(json.dumps(out, indent=1))
    elif args.part == "text-joint-study":
        print(json.dumps(study_joint(), indent=1))
    elif args.part.startswith("audio-embedding"):
        import fit_audio_embedding as emb  # the embedding signals of audio coverage

        emb.main(args.part, rest, write_section)
    else:
        import fit_calibration_audio as more  # the parts that need audio and models

        more.main(args.part, rest, write_section)


if __name__ == "__main__":
    main()
