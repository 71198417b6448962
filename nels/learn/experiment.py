"""`nels evaluate learning`: every selection strategy from the same start, on the same pool.

The offline pool, built from ESC-50 so that the experiment is honest without the internet:

* test: fold 1 (never seen by anything);
* seed: fold 2, labelled (8 clips per class); the starting model is a CNN trained on the seed only,
  so no pool label ever reaches it;
* pool: folds 3-5 with their labels hidden (1200 clips). Each clip carries the text a crawl would
  give: a query and a title. The query names the clip's true class with probability 1 - NOISE_RATE
  (0.75) and a random other class otherwise — search engines return plenty of wrong videos — worded
  with a random phrase of that class's vocabulary entry;
* distractors: 150 mixtures of two pool clips of different classes (truth: none) and 100 synthetic
  sounds of no target class (tones, chords, filtered noise), each with a random class query.

The report (Markdown + PNG) answers the open question: select by acoustics only (threshold,
calibrated, clarity) or by acoustics and semantics together (clarity+semantic)?
"""
from __future__ import annotations

import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from nels.config import SAMPLE_RATE
from nels.learn import loop, select
from nels.learn.embed import CACHE, embed_many

NOISE_RATE = 0.25
N_MIX, N_OTHER = 150, 100
TITLES = ["{q}", "{q} sound effect", "{q} (HD)", "best {q} compilation", "{q} - free sound", "relaxing {q}"]
NO_CLASS, MIXTURE = -3, -2


def _esc_rows(root: Path) -> list[dict]:
    by_stem = {p.stem: p for p in (root / "audio").iterdir()}
    rows = []
    with open(root / "meta" / "esc50.csv", newline="") as f:
        for r in csv.DictReader(f):
            stem = Path(r["filename"]).stem
            if stem in by_stem:
                rows.append({"path": str(by_stem[stem]), "fold": int(r["fold"]), "target": int(r["target"]),
                             "category": r["category"], "filename": r["filename"]})
    return rows


def _synth_other(seed: int) -> np.ndarray:
    """A sound of no ESC-50 class: a chord, a pure beep pattern or band-passed noise, 5 s."""
    rng = np.random.default_rng(10_000 + seed)
    t = np.arange(5 * SAMPLE_RATE) / SAMPLE_RATE
    kind = seed % 3
    if kind == 0:
        f0 = rng.uniform(150, 500)
        x = sum(np.sin(2 * np.pi * f0 * r * t) for r in (1, 1.25, 1.5))
    elif kind == 1:
        x = np.sin(2 * np.pi * rng.uniform(600, 2000) * t) * ((t * rng.uniform(1, 4)) % 1 < 0.5)
    else:
        n = rng.standard_normal(t.size)
        k = np.exp(-np.arange(64) / rng.uniform(2, 20))
        x = np.convolve(n, k * np.cos(np.arange(64) * rng.uniform(0.2, 2.5)), mode="same")
    return (0.3 * x / (np.abs(x).max() + 1e-9)).astype(np.float32)


def build_pool(root: Path, seed: int = 0) -> dict:
    """The experiment's seed / pool / test lists (see module docstring). Deterministic in `seed`."""
    from nels.encoders.text import load_vocabulary

    rng = np.random.default_rng(seed)
    rows = _esc_rows(root)
    labels = sorted({r["category"] for r in rows}, key=lambda c: next(r["target"] for r in rows if r["category"] == c))
    voc = load_vocabulary()
    phrases = {l: [voc.name(l)] + list(voc.get(l).synonyms) for l in labels}

    def crawl_text(query_class: str) -> str:
        q = str(rng.choice(phrases[query_class]))
        return q + " | " + str(rng.choice(TITLES)).format(q=q)

    pool = []
    genuine = [r for r in rows if r["fold"] >= 3]
    for r in genuine:
        qc = r["category"] if rng.random() >= NOISE_RATE else str(rng.choice([l for l in labels if l != r["category"]]))
        pool.append({"key": "file:" + r["path"], "truth": r["target"], "query_class": qc, "text": crawl_text(qc)})
    for i in range(N_MIX):
        a, b = rng.choice(len(genuine), 2, replace=False)
        while genuine[a]["target"] == genuine[b]["target"]:
            b = rng.integers(len(genuine))
        g = float(rng.uniform(0.5, 1.0))
        qc = genuine[a]["category"]
        pool.append({"key": f"mix:{genuine[a]['path']}|{genuine[b]['path']}|{g:.3f}", "truth": MIXTURE,
                     "query_class": qc, "text": crawl_text(qc)})
    for i in range(N_OTHER):
        qc = str(rng.choice(labels))
        pool.append({"key": f"synth:{i}", "truth": NO_CLASS, "query_class": qc, "text": crawl_text(qc)})
    return {"labels": labels, "seed": [r for r in rows if r["fold"] == 2], "test": [r for r in rows if r["fold"] == 1],
            "pool": pool, "noise_rate": NOISE_RATE}


def load_key(key: str) -> np.ndarray:
    from nels.audio.decode import decode

    kind, _, rest = key.partition(":")
    if kind == "file":
        return decode(rest)
    if kind == "mix":
        a, b, g = rest.split("|")
        x, y = decode(a), decode(b)
        n = min(x.size, y.size)
        return (x[:n] + float(g) * y[:n]).astype(np.float32)
    if kind == "synth":
        return _synth_other(int(rest))
    raise ValueError(key)


def seed_model(root: Path, seed_rows: list[dict], epochs: int, seed: int, progress: bool) -> Path:
    """Train (once, cached, resumable) the starting CNN on the seed clips only."""
    from nels.training.train import train

    work = CACHE / f"seed-esc50-fold2-s{seed}"
    out = CACHE / f"seed-cnn-fold2-s{seed}-e{epochs}"
    if (out / "model.json").exists():
        return out
    (work / "audio").mkdir(parents=True, exist_ok=True)
    (work / "meta").mkdir(exist_ok=True)
    with open(work / "meta" / "esc50.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        w.writeheader()
        for r in seed_rows:
            link = work / "audio" / Path(r["path"]).name
            if not link.exists():
                os.symlink(r["path"], link)
            w.writerow({"filename": r["filename"], "fold": r["fold"], "target": r["target"], "category": r["category"],
                        "esc10": "False", "src_file": "", "take": "A"})
    train(str(work), "esc50", out=str(out), epochs=epochs, seed=seed, quiet=not progress, progress=progress, threads=1,
          command="nels evaluate learning (seed model: ESC-50 fold 2 only)")
    return out


def prepare(root: Path, seed: int = 0, seed_epochs: int = 80, progress: bool = True, model_seed: int = 0):
    """seed: the pool (crawl-text noise, distractors); model_seed: the starting CNN (trained once, cached)."""
    from nels.encoders.base import load_encoder
    from nels.search.query import label_space

    spec = build_pool(root, seed)
    enc = load_encoder(seed_model(root, spec["seed"], seed_epochs, model_seed, progress))
    labels = spec["labels"]
    if list(enc.labels) != labels:
        raise RuntimeError("seed model classes differ from the dataset's")

    def split(keys, y, tag):
        X, clip = embed_many(enc, keys, load_key, tag, progress)
        return loop.Split(X, clip, np.asarray(y))

    test = split(["file:" + r["path"] for r in spec["test"]], [r["target"] for r in spec["test"]], "test")
    seedset = split(["file:" + r["path"] for r in spec["seed"]], [r["target"] for r in spec["seed"]], "seed")
    pool = split([p["key"] for p in spec["pool"]], [p["truth"] for p in spec["pool"]], f"pool-s{seed}")
    sims, _ = label_space(labels).query([p["text"] for p in spec["pool"]])
    data = loop.LoopData(labels, seedset, pool, test, sims, [p["key"] for p in spec["pool"]])
    return data, enc, spec


def calibration_data(data: loop.LoopData, folds: int = 4, seed: int = 0):
    """Out-of-fold clip probabilities on the seed set (for the calibrated strategy)."""
    rng = np.random.default_rng(seed)
    s = data.seed
    fold_of = rng.permutation(s.n_clips) % folds
    probs = np.zeros((s.n_clips, len(data.labels)), np.float32)
    for f in range(folds):
        tr = np.flatnonzero(fold_of != f)
        seg = s.segments_of(tr)
        head = loop.train_head(s.X[seg], s.y[s.clip[seg]], len(data.labels), seed=seed)
        te = np.flatnonzero(fold_of == f)
        seg = s.segments_of(te)
        sub = loop.Split(s.X[seg], np.searchsorted(te, s.clip[seg]), s.y[te])
        probs[te] = loop.clip_probs(head, sub)
    return probs, s.y


def run_experiment(dataset: str, out: str, iterations: int = 5, cap: int = 5, patience: int = 2, seed: int = 0,
                   seed_epochs: int = 80, progress: bool = True) -> dict:
    from nels.store.library import Library

    t0 = time.time()
    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    data, enc, spec = prepare(Path(dataset), seed, seed_epochs, progress)
    lib = Library(outp / "library", catalogue=str(outp / "library" / "nels.db"))  # its own catalogue, never
    # $NELS_CATALOGUE's; iterations are recorded there: an interrupted experiment resumes
    strategies = select.strategies(calibration_data(data, seed=seed)) + [select.QueryLabel()]
    run_name = f"experiment-seed{seed}-cap{cap}"
    results = {}
    for st in strategies:
        done = loop.load_done(lib.catalogue, run_name, st.name, data.labels)
        hist, _ = loop.run(data, st, iterations, cap, patience, seed=seed, done=done,
                           record=loop.recorder(lib.catalogue, run_name, st.name, enc.name, data.labels))
        results[st.name] = hist
        if progress:
            print(f"{st.name:<18} " + " ".join(f"{h['map']:.4f}" for h in hist), file=sys.stderr)
    report = write_report(outp, data, spec, results, enc.name, time.time() - t0, dict(iterations=iterations, cap=cap,
                                                                                      patience=patience, seed=seed))
    return report


def _drift(data, hist) -> tuple[dict, list]:
    from collections import Counter

    pairs = Counter()
    kinds = Counter()
    for row in hist[1:]:
        for c, k in row["selected"].items():
            truth = int(data.pool.y[int(c)])
            if truth == k:
                kinds["correct"] += 1
            elif truth == MIXTURE:
                kinds["mixture"] += 1
                pairs[(data.labels[k], "(mixture)")] += 1
            elif truth == NO_CLASS:
                kinds["no class"] += 1
                pairs[(data.labels[k], "(no target class)")] += 1
            else:
                kinds["wrong class"] += 1
                pairs[(data.labels[k], data.labels[truth])] += 1
    return dict(kinds), pairs.most_common(8)


def write_report(out: Path, data, spec, results: dict, model: str, seconds: float, params: dict) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for n in names:
        h = results[n]
        ax.plot([r["iteration"] for r in h], [r["map"] for r in h], marker="o", label=n)
    ax.set_xlabel("iteration")
    ax.set_ylabel("mAP on ESC-50 fold 1")
    ax.set_title("Never-ending learning: mAP per iteration")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "learning_map.png", dpi=120)
    plt.close(fig)

    C = len(data.labels)
    fig, axes = plt.subplots(5, 10, figsize=(20, 10), sharex=True, sharey=True)
    for k in range(C):
        a = axes.flat[k]
        for n in names:
            h = results[n]
            a.plot([r["iteration"] for r in h], [r["per_class"][k] for r in h], lw=1)
        a.set_title(data.labels[k], fontsize=7)
        a.tick_params(labelsize=6)
    fig.legend(names, loc="lower center", ncol=len(names), fontsize=8)
    fig.suptitle("AP per class per iteration (each line a strategy)")
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    fig.savefig(out / "learning_per_class.png", dpi=90)
    plt.close(fig)

    lines = ["# Never-ending learning: selection strategies compared", "",
             f"Model: `{model}` (a CNN trained on ESC-50 fold 2 only). Test: fold 1. Pool: folds 3-5 with hidden"
             f" labels, crawl text wrong {int(spec['noise_rate'] * 100)} % of the time, plus {N_MIX} mixtures and"
             f" {N_OTHER} sounds of no target class. Parameters: {params}. Ran in {seconds / 60:.1f} min.", "",
             "| strategy | " + " | ".join(f"it {i}" for i in range(params["iterations"] + 1)) +
             " | change | selected | selection precision |",
             "|---" * (params["iterations"] + 5) + "|"]
    summary = {}
    for n in names:
        h = results[n]
        maps = [f"{r['map']:.4f}" for r in h] + [""] * (params["iterations"] + 1 - len(h))
        kinds, pairs = _drift(data, h)
        sel = sum(kinds.values())
        prec = kinds.get("correct", 0) / sel if sel else float("nan")
        delta = h[-1]["map"] - h[0]["map"]
        summary[n] = {"map": [r["map"] for r in h], "delta": delta, "selected": sel, "precision": prec,
                      "kinds": kinds, "drift": pairs}
        lines.append(f"| {n} | " + " | ".join(maps) + f" | {delta:+.4f} | {sel} | {prec:.2f} |")
    lines += ["", "![mAP per iteration](learning_map.png)", "", "![AP per class](learning_per_class.png)", "",
              "## Drift: which classes absorbed clips of another class", "",
              "| strategy | selected as | was really | clips |", "|---|---|---|---|"]
    for n in names:
        for (as_, really), c in summary[n]["drift"]:
            lines.append(f"| {n} | {as_} | {really} | {c} |")
    acoustic = {n: summary[n]["delta"] for n in ("threshold", "calibrated", "clarity") if n in summary}
    both = summary.get("clarity+semantic", {}).get("delta")
    best_ac = max(acoustic, key=acoustic.get) if acoustic else None
    lines += ["", "## The open question: acoustic only, or acoustic and semantic?", ""]
    if best_ac is not None and both is not None:
        verdict = "acoustic + semantic" if both > acoustic[best_ac] else "acoustic only"
        lines.append(f"Best acoustic-only strategy: **{best_ac}** ({acoustic[best_ac]:+.4f} mAP over"
                     f" {len(results[best_ac]) - 1} iterations, selection precision {summary[best_ac]['precision']:.2f});"
                     f" clarity+semantic: **{both:+.4f}** (precision {summary['clarity+semantic']['precision']:.2f})."
                     f" On this pool, **{verdict}** selection learns more.")
    (out / "REPORT.md").write_text("\n".join(lines) + "\n")
    (out / "learning.json").write_text(json.dumps({n: {k: v for k, v in s.items() if k != "drift"}
                                                   | {"drift": [[a, b, c] for (a, b), c in s["drift"]]}
                                                   for n, s in summary.items()}, indent=2, default=float))
    return summary
