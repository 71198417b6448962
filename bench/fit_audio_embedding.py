"""Is a query sound one the CNN was taught? Signals on its embeddings beside the entropy (issue 18, section 1).

    python3 bench/fit_calibration.py audio-embedding-study --select-model /tmp/ood-helper/cnn-fold2 \\
        [--speech DIR]   # every candidate, chosen on the fold-2 CNN, measured on the shipped CNN (prints only)
    python3 bench/fit_calibration.py audio-embedding --features max_logit [--speech DIR]
                         # fit the chosen one for the shipped CNN: calibration.json audio_coverage.embedding
    (--model DIR: the CNN to fit for, default nels/data/models/esc50-cnn; --work DIR, default /tmp/ood-helper:
     every sound's window embeddings, cached)

Candidates, per query (its 2 s windows, as search encodes them; higher = less explained): the normalised entropy
of the mean class probabilities (today's signal); the squared Mahalanobis distance (over d, log) of the windows'
raw or L2-normalised embeddings to the nearest class mean under one shared covariance of the CNN's training
windows (Lee et al. 2018), and the relative one (minus the distance under one Gaussian of all training windows,
Ren et al. 2021), each aggregated as the mean over windows, the best window, or of the mean embedding; the
negative energy (-logsumexp of the logits, Liu et al. 2020) and the negative largest logit; the negative L2 norm
of the raw embedding (a softmax network gives unknown inputs smaller feature magnitudes, Dhamija et al. 2018),
mean over windows or best window; and the entropy with each.

Training statistics: the clips of the CNN's training split (model.json `metrics.validation_files` lists the
clips it held out: never used for them). Fit: the CNN's validation clips (whole source recordings drawn from
its training folds, never trained on; they only chose its best epoch and clip pooling) vs 120 synthesised sounds
(seed 0, `fit_calibration_audio.synth_sounds`, the sounds the entropy signal was fitted with), a logistic model
(class-balanced), threshold: the largest that flags at most 3 % of those validation clips.

Choice (`--select-model`): the same fit on a CNN trained without fold 2 (`nels train --exclude-fold 2`), measured
on its 400 fold-2 clips (never seen) vs synthesised seed 2: the candidate flagging the most synthetic sounds among
those that flag at most 3 % of fold-2 clips. Check, on the shipped CNN (never chosen or fitted on): ESC-50 fold 1
(400 clips) vs synthesised seed 1; realworld-dev's clips of labels outside ESC-50 vs its ESC-50-class clips;
speech files (--speech).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from common import ROOT, esc50

DEFAULT_MODEL = ROOT / "nels" / "data" / "models" / "esc50-cnn"
MAX_ESC_FLAGGED = 0.03  # the threshold flags at most this share of the fit's ESC-50 clips


# -- window embeddings of every sound, cached -------------------------------------------------------------
def encode_set(enc, sounds, tag: str, work: Path) -> dict:
    """{"raw": (N, d), "probs": (N, C), "clip": (N,) sound index, "names": [...]} over the windows of
    `sounds` [(name, waveform at 16 kHz)] as search encodes a query, cached in work (keyed by the weights)."""
    from nels.search.query import encode_query_windows

    key = hashlib.sha256((enc.meta.get("weights_sha256", enc.name) + tag).encode()).hexdigest()[:16]
    f = work / f"{tag}-{key}.npz"
    if f.exists():
        with np.load(f, allow_pickle=False) as z:
            return {k: z[k] for k in z.files} | {"names": [str(s) for s in z["names"]]}
    t0 = time.time()
    raws, probs, clip, names = [], [], [], []
    for i, (name, x) in enumerate(sounds):
        e = encode_query_windows(enc, x, 16000)
        raws.append(e.raw)
        probs.append(e.probs)
        clip += [i] * len(e.raw)
        names.append(name)
    out = {"raw": np.concatenate(raws).astype(np.float32), "probs": np.concatenate(probs).astype(np.float32),
           "clip": np.array(clip), "names": np.array(names)}
    work.mkdir(parents=True, exist_ok=True)
    np.savez(f, **out)
    print(f"{tag}: {len(names)} sounds, {len(clip)} windows, {time.time() - t0:.0f} s", file=sys.stderr)
    return out | {"names": names}


def esc50_sounds(which: str, model_dir: Path):
    """ESC-50 clips and labels: 'train' (the model's training folds minus its validation clips), 'validation',
    or 'fold1' / 'fold2' (a whole fold)."""
    from nels.audio.decode import decode
    from nels.training.datasets import load_dataset

    meta = json.loads((Path(model_dir) / "model.json").read_text())
    val = set(meta["metrics"]["validation_files"])
    test_fold = int(meta["metrics"]["test_fold"])
    ds = load_dataset(str(esc50()), "esc50")
    if which.startswith("fold"):
        items = [it for it in ds.items if it.fold == int(which[4:])]
    elif which == "validation":
        items = [it for it in ds.items if it.fold != test_fold and it.path.stem in val]
    else:
        items = [it for it in ds.items if it.fold != test_fold and it.path.stem not in val]
    return [(it.path.stem, decode(str(it.path), sr=16000)) for it in items], [ds.labels[it.label] for it in items]


def synth(seed: int):
    from fit_calibration_audio import synth_sounds

    return [(f"synth-{seed}-{i}", x) for i, x in enumerate(synth_sounds(120, seed))]


def realworld_sounds():
    """realworld-dev (a check only), named 'label|esc50_class|file'."""
    from nels.audio.decode import decode
    from nels.training.datasets import load_dataset

    ds = load_dataset(str(esc50().parent / "realworld-dev"), "realworld")
    return [(f"{ds.labels[it.label]}|{it.esc50_class or ''}|{it.path.name}", decode(str(it.path), sr=16000))
            for it in ds.items]


def speech_sounds(d: Path):
    from nels.audio.decode import decode

    return [(p.name, decode(str(p), sr=16000)) for p in sorted(Path(d).glob("*.wav"))]


# -- training statistics and the candidates ---------------------------------------------------------------
def class_statistics(raw: np.ndarray, y: np.ndarray, n_classes: int, shrink: float = 0.01) -> dict:
    """Per space (raw, unit: L2-normalised): class means, one shared within-class precision, and the mean and
    precision of all windows as one Gaussian (the relative distance's background)."""
    out = {}
    Z0 = raw.astype(np.float64)
    for space, Z in (("raw", Z0), ("unit", Z0 / np.maximum(np.linalg.norm(Z0, axis=1, keepdims=True), 1e-12))):
        means = np.stack([Z[y == c].mean(0) for c in range(n_classes)])
        within = Z - means[y]
        out[space] = {"means": means, "precision": _precision(within.T @ within / len(Z), shrink),
                      "mean0": Z.mean(0)[None], "precision0": _precision(np.cov(Z, rowvar=False, bias=True), shrink)}
    return out


def _precision(cov: np.ndarray, shrink: float) -> np.ndarray:
    d = cov.shape[0]
    return np.linalg.inv((1 - shrink) * cov + shrink * np.trace(cov) / d * np.eye(d))  # dead ReLU units


def train_statistics(enc, model_dir: Path, work: Path) -> dict:
    sounds, labels = esc50_sounds("train", model_dir)
    got = encode_set(enc, sounds, "train", work)
    index = {l: i for i, l in enumerate(enc.labels)}
    y = np.array([index[labels[c]] for c in got["clip"]])
    print(f"training statistics: {len(y)} windows of {len(sounds)} clips", file=sys.stderr)
    return class_statistics(got["raw"], y, len(enc.labels))


def min_mahalanobis(Z: np.ndarray, means: np.ndarray, prec: np.ndarray) -> np.ndarray:
    zp = Z @ prec
    d = (zp * Z).sum(1)[:, None] - 2.0 * zp @ means.T + ((means @ prec) * means).sum(1)[None, :]
    return np.maximum(d.min(1), 1e-12)


def features(enc, got: dict, stats: dict) -> dict[str, np.ndarray]:
    """Every candidate per sound (higher = less explained), and the shipped signal's inputs ('norm' as
    `nels.search.coverage.embedding_signal` computes it, here negated)."""
    from scipy.special import logsumexp

    from nels.search.coverage import embedding_signal, normalised_entropy

    W = enc.model.fc.weight.detach().float().numpy().astype(np.float64)
    b = enc.model.fc.bias.detach().float().numpy().astype(np.float64)
    clip = got["clip"]
    idx = [np.flatnonzero(clip == i) for i in range(int(clip.max()) + 1)]
    raw = got["raw"].astype(np.float64)
    F = {"entropy": np.array([normalised_entropy(got["probs"][j].mean(0)) for j in idx])}
    logits = raw @ W.T + b
    per_window = {"neg energy": -logsumexp(logits, axis=1), "neg max logit": -logits.max(1)}
    for name, v in per_window.items():
        F[f"{name}, mean window"] = np.array([v[j].mean() for j in idx])
        F[f"{name}, best window"] = np.array([v[j].min() for j in idx])
    sig = [embedding_signal(enc, raw[j]) for j in idx]
    F["neg max logit, best window"] = -np.array([s["max_logit"] for s in sig])  # as search computes it
    F["neg norm, mean window"] = -np.array([s["norm"] for s in sig])
    F["neg norm, best window"] = -np.array([s["norm_max"] for s in sig])
    for space, st in stats.items():
        Z = raw if space == "raw" else raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)
        d = Z.shape[1]
        md = min_mahalanobis(Z, st["means"], st["precision"]) / d
        d0 = min_mahalanobis(Z, st["mean0"], st["precision0"]) / d
        zm = np.stack([Z[j].mean(0) for j in idx])
        if space == "unit":
            zm = zm / np.maximum(np.linalg.norm(zm, axis=1, keepdims=True), 1e-12)
        mdm = min_mahalanobis(zm, st["means"], st["precision"]) / d
        for kind, v, vm in (("MD", np.log(md), np.log(mdm)),
                            ("RMD", md - d0, mdm - min_mahalanobis(zm, st["mean0"], st["precision0"]) / d)):
            F[f"{space} {kind}, mean window"] = np.array([v[j].mean() for j in idx])
            F[f"{space} {kind}, best window"] = np.array([v[j].min() for j in idx])
            F[f"{space} {kind}, mean embedding"] = vm
    return F


def candidates(names) -> list[list[str]]:
    singles = [n for n in names if n != "entropy"]
    return [["entropy"]] + [[n] for n in singles] + [["entropy", n] for n in singles]


def threshold_at(p_explained: np.ndarray, share: float) -> float:
    """The largest threshold that flags (P < threshold) at most `share` of these explained sounds."""
    s = np.sort(p_explained)
    k = int(np.floor(share * len(s)))
    return float(s[k]) if k < len(s) else float(s[-1] + 1e-9)


def fit(Fpos: dict, Fneg: dict, cols: list[str]):
    """A class-balanced logistic model P(explained) of `cols` on explained sounds vs synthesised ones; its
    threshold (`threshold_at` MAX_ESC_FLAGGED of the explained ones)."""
    from sklearn.linear_model import LogisticRegression

    X = np.concatenate([np.stack([Fpos[c] for c in cols], 1), np.stack([Fneg[c] for c in cols], 1)])
    y = np.r_[np.ones(len(Fpos[cols[0]])), np.zeros(len(Fneg[cols[0]]))]
    lr = LogisticRegression(C=10.0, class_weight="balanced", max_iter=5000).fit(X, y)
    prob = lambda F: lr.predict_proba(np.stack([F[c] for c in cols], 1))[:, 1]  # noqa: E731
    return lr, prob, threshold_at(prob(Fpos), MAX_ESC_FLAGGED)


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return round(float(roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg])), 3)


def flagged(p: np.ndarray, thr: float) -> float:
    return round(float(np.mean(p < thr)), 3)


def sets_for(enc, model_dir: Path, work: Path, names: list[str], speech: str | None) -> dict:
    make = {"validation": lambda: esc50_sounds("validation", model_dir)[0],
            "fold1": lambda: esc50_sounds("fold1", model_dir)[0], "fold2": lambda: esc50_sounds("fold2", model_dir)[0],
            "synth0": lambda: synth(0), "synth1": lambda: synth(1), "synth2": lambda: synth(2),
            "realworld": realworld_sounds, "speech": lambda: speech_sounds(Path(speech))}
    return {n: encode_set(enc, make[n](), n, work) for n in names if n != "speech" or speech}


def measure(enc, model_dir: Path, work: Path, speech: str | None) -> tuple[dict, dict]:
    """The shipped CNN: every candidate fitted (validation vs synth0) and checked; and today's signal as shipped."""
    from nels.search.coverage import calibration

    stats = train_statistics(enc, model_dir, work)
    sets = sets_for(enc, model_dir, work, ["validation", "synth0", "fold1", "synth1", "realworld", "speech"], speech)
    F = {k: features(enc, v, stats) for k, v in sets.items()}
    rw_esc = np.array([n.split("|")[1] != "" for n in sets["realworld"]["names"]])
    rows = {}
    shipped = (calibration().get("audio_coverage") or {}).get("softmax") or {}
    todo = [(" + ".join(c), c, None) for c in candidates(list(F["validation"]))]
    if shipped.get("feature") == "entropy":  # today's signal as it ships (fitted on a fold-2 CNN's fold-2 clips)
        todo.insert(0, (f"entropy, as shipped (threshold {shipped['threshold']})", ["entropy"],
                        lambda f: 1 / (1 + np.exp(-(shipped["bias"] + shipped["weights"][0] * f["entropy"])))))
    for name, cols, prob in todo:
        if prob is None:
            _, prob, thr = fit(F["validation"], F["synth0"], cols)
        else:
            thr = float(shipped["threshold"])
        P = {k: prob(f) for k, f in F.items()}
        r = {"fit AUC": auc(P["validation"], P["synth0"]), "fit: ESC-50 flagged": flagged(P["validation"], thr),
             "fit: synthetic flagged": flagged(P["synth0"], thr),
             "check AUC": auc(P["fold1"], P["synth1"]), "check: fold-1 flagged": flagged(P["fold1"], thr),
             "check: synthetic flagged": flagged(P["synth1"], thr),
             "realworld AUC": auc(P["realworld"][rw_esc], P["realworld"][~rw_esc]),
             "realworld: ESC-50-class clips flagged": flagged(P["realworld"][rw_esc], thr),
             "realworld: other clips flagged": flagged(P["realworld"][~rw_esc], thr)}
        if "speech" in P:
            r["speech flagged"] = flagged(P["speech"], thr)
        rows[name] = r
    return rows, {"sets": {k: len(v["names"]) for k, v in sets.items()}, "realworld ESC-50-class clips":
                  int(rw_esc.sum()), "realworld other clips": int((~rw_esc).sum())}


def select(select_model: Path, work: Path) -> tuple[str, dict]:
    """The choice on a CNN trained without fold 2: fit each candidate on its validation clips vs synth0, measure
    on fold 2 vs synth2; the most synthetic sounds flagged among those flagging <= 3 % of fold 2."""
    from nels.encoders.base import create_encoder

    enc = create_encoder(str(select_model))
    if int(enc.meta["metrics"]["test_fold"]) != 2:
        sys.exit(f"{select_model}: not trained without fold 2")
    stats = train_statistics(enc, select_model, work)
    sets = sets_for(enc, select_model, work, ["validation", "synth0", "fold2", "synth2"], None)
    F = {k: features(enc, v, stats) for k, v in sets.items()}
    rows = {}
    for cols in candidates(list(F["validation"])):
        _, prob, thr = fit(F["validation"], F["synth0"], cols)
        rows[" + ".join(cols)] = {"fold-2 flagged": flagged(prob(F["fold2"]), thr),
                                  "synthetic (seed 2) flagged": flagged(prob(F["synth2"]), thr),
                                  "AUC": auc(prob(F["fold2"]), prob(F["synth2"]))}
    ok = {k: r for k, r in rows.items() if r["fold-2 flagged"] <= MAX_ESC_FLAGGED}
    best = max(ok, key=lambda k: (ok[k]["synthetic (seed 2) flagged"], -ok[k]["fold-2 flagged"]))
    return best, rows


def fit_shipped(args) -> dict:
    """calibration.json audio_coverage.embedding: the chosen features' logistic model for the shipped CNN's
    weights (inputs as search computes them: `normalised_entropy`, `embedding_signal`)."""
    from nels.encoders.base import create_encoder

    model_dir, work = Path(args.model), Path(args.work)
    enc = create_encoder(str(model_dir))
    cols = args.features.split(",")
    rows, info = measure(enc, model_dir, work, args.speech)
    sets = sets_for(enc, model_dir, work, ["validation", "synth0"], None)
    shipped = {"norm": "neg norm, mean window", "norm_max": "neg norm, best window", "entropy": "entropy",
               "max_logit": "neg max logit, best window"}
    F = {k: features(enc, v, {}) for k, v in sets.items()}
    F = {k: {c: (f[shipped[c]] if c == "entropy" else -f[shipped[c]]) for c in cols} for k, f in F.items()}
    lr, prob, thr = fit(F["validation"], F["synth0"], cols)
    name = " + ".join(shipped[c] for c in cols)
    return {"features": cols, "weights": [round(float(w), 6) for w in lr.coef_[0]],
            "bias": round(float(lr.intercept_[0]), 6), "threshold": round(thr, 4),
            "weights_sha256": enc.meta["weights_sha256"], "model": enc.name,
            "fitted_on": f"{len(F['validation'][cols[0]])} ESC-50 clips the CNN held out for validation (whole"
                         f" recordings from folds 2-5, never trained on) vs 120 synthesised sounds (seed 0)",
            "threshold_rule": f"the largest that flags at most {MAX_ESC_FLAGGED:.0%} of those validation clips",
            "chosen_by": "bench/fit_calibration.py audio-embedding-study --select-model (a CNN trained without fold 2,"
                         " 100 epochs: fitted on its validation clips vs synthesised seed 0, the most synthesised"
                         " seed-2 sounds flagged among the candidates that flag <= 3 % of its fold-2 clips)",
            "measured": rows[name], "measured_entropy_alone": rows["entropy"],
            "measured_entropy_as_shipped": next((r for k, r in rows.items() if k.startswith("entropy, as shipped")), None),
            **info,
            "date": time.strftime("%Y-%m-%d")}


def write_embedding_section(write_section, value: dict) -> None:
    from nels.search.coverage import CALIBRATION

    cur = json.loads(CALIBRATION.read_text()).get("audio_coverage") or {}
    cur["embedding"] = value
    write_section("audio_coverage", cur)


def main(part: str, argv, write_section) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(DEFAULT_MODEL), help="the CNN measured / fitted for")
    ap.add_argument("--select-model", default=None, help="study: a CNN trained without fold 2 (the choice)")
    ap.add_argument("--features", default="max_logit", help="audio-embedding: entropy, max_logit, norm, norm_max")
    ap.add_argument("--speech", default=None, help="a folder of speech .wav files (a check only)")
    ap.add_argument("--work", default="/tmp/ood-helper")
    args = ap.parse_args(argv)
    from nels.encoders.base import create_encoder

    if part == "audio-embedding-study":
        out = {}
        if args.select_model:
            best, rows = select(Path(args.select_model), Path(args.work))
            out["choice (CNN without fold 2: fit on its validation clips vs synth 0, measured on fold 2 vs synth 2)"] \
                = {"chosen": best, "rows": rows}
        enc = create_encoder(args.model)
        rows, info = measure(enc, Path(args.model), Path(args.work), args.speech)
        out["shipped CNN: fit (validation clips vs synth 0), check (fold 1 vs synth 1; realworld-dev; speech)"] = \
            {"rows": rows, **info}
        print(json.dumps(out, indent=1))
    elif part == "audio-embedding":
        value = fit_shipped(args)
        write_embedding_section(write_section, value)
        print(json.dumps(value, indent=1))
