"""Choose how much the joint space's text ranking counts in a fused text query of a CNN + YAMNet library, by the
CNN's P(covered) of the query, on classes the CNN and its joint space never learned; write `joint_text_gamma` to
nels/data/calibration.json.

    python3 bench/fit_joint_text_fusion.py            # the table (needs bench/fit_audio_fusion.py's library)
    python3 bench/fit_joint_text_fusion.py --write    # ... and store the chosen exponent

The joint space is trained on the CNN's embeddings and its classes' phrasings: for a query the CNN has no class
for ("guitar", or here a held-out ESC-50 class) its ranking is the nearest learned class's, which the coverage
weighting of the two classifiers (`coverage_gamma`) already keeps out of the linguistic ranking, but which the
fused mode then added back by reciprocal rank whenever the CNN's label similarity was within COVERAGE_MARGIN of
YAMNet's. Rule compared: the joint list's reciprocal-rank weight x P(the CNN covers the query) ** gamma (left out
below JOINT_TEXT_MIN_WEIGHT), against that margin gate (today) and linguistic search alone.

Library: bench/fit_audio_fusion.py's (ESC-50 fold 2, all 50 classes; a CNN and joint space trained without fold 2
and without 15 classes; YAMNet). Queries: each class's name and up to 4 vocabulary synonyms (nels/data/
vocabulary.json; not the joint training phrasings, which the coverage model's phrasing bank holds: a query there
would find itself). Relevant = the clips of that class; mAP over the whole ranking, through `search` itself.
Chosen: the best mean of the covered and the held-out classes' mAP. Never fold 1, never realworld-dev.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from common import ROOT, esc50

from fit_audio_fusion import WORK

GAMMAS = (0.5, 1, 2, 4, 8, 16)


def queries(labels: list[str]) -> list[tuple[str, str]]:
    from nels.encoders.text import load_vocabulary

    voc = load_vocabulary()
    out = []
    for l in labels:
        ct = voc.get(l)
        out += [(ct.name, l)] + [(s, l) for s in ct.synonyms[:4]]
    return out


def run(lib, truth, qs, mode: str) -> list[float]:
    from nels.metrics import average_precision
    from nels.search.query import search

    counts: dict[str, int] = {}
    for v in truth.values():
        counts[v] = counts.get(v, 0) + 1
    aps = []
    for text, label in qs:
        res = search(lib, text=text, mode=mode, k=len(truth), log_weak=False)
        aps.append(float(average_precision([truth.get(r["clip_id"]) == label for r in res], counts[label])))
    return aps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    from nels.evaluate.retrieval import build_fold_library
    from nels.search import coverage

    split = json.loads((WORK / "split.json").read_text())
    lib, truth = build_fold_library(str(esc50()), "esc50", 2, f"cnn:{WORK / 'cnn35'}+yamnet", WORK / "fold2-cnn35-yamnet")
    qs = queries(sorted(set(truth.values())))
    covered = np.array([l in split["kept"] for _, l in qs])
    rel = coverage.calibration()["relevance"]
    rel.pop("joint_text_gamma", None)
    variants = {"linguistic alone": ("linguistic", None), "margin gate, reciprocal rank (today's fused)": ("fused", None)}
    variants.update({f"joint weight x P(covered)^{g}": ("fused", g) for g in GAMMAS})
    table = {}
    for name, (mode, gamma) in variants.items():
        t = time.time()
        if gamma is None:
            rel.pop("joint_text_gamma", None)
        else:
            rel["joint_text_gamma"] = gamma
        aps = np.array(run(lib, truth, qs, mode))
        c, h = float(aps[covered].mean()), float(aps[~covered].mean())
        table[name] = {"covered": round(c, 4), "held out": round(h, 4), "balanced": round((c + h) / 2, 4),
                       "all": round(float(aps.mean()), 4)}
        print(f"{name:<48} covered {c:.3f}  held out {h:.3f}  balanced {(c + h) / 2:.3f}  all {aps.mean():.3f}"
              f"  ({time.time() - t:.0f} s)", flush=True)
    rel.pop("joint_text_gamma", None)
    fitted = [n for n in table if n.startswith("joint weight")]
    best = max(fitted, key=lambda n: table[n]["balanced"])
    gamma = variants[best][1]
    out = {"table": table, "queries": {"covered": int(covered.sum()), "held out": int((~covered).sum())},
           "chosen": best, "date": time.strftime("%Y-%m-%d")}
    dest = ROOT / "bench" / "results" / "audio-fusion" / "fold2-joint-text-choice.json"
    dest.write_text(json.dumps(out, indent=1) + "\n")
    print(f"chosen: {best}", file=sys.stderr)
    if args.write:
        if table[best]["balanced"] <= table["margin gate, reciprocal rank (today's fused)"]["balanced"]:
            sys.exit("the margin gate is as good on validation: nothing written")
        f = ROOT / "nels" / "data" / "calibration.json"
        cur = json.loads(f.read_text())
        cur["relevance"]["joint_text_gamma"] = gamma
        cur["relevance"]["joint_text_gamma_why"] = (
            f"bench/fit_joint_text_fusion.py on {WORK / 'fold2-cnn35-yamnet'} (ESC-50 fold 2; a CNN + joint space"
            f" trained without fold 2 and {len(split['hidden'])} classes; names + 4 synonyms per class): best mean of"
            " covered / held-out mAP " + "; ".join(f"{n}: {r['covered']:.3f} / {r['held out']:.3f}" for n, r in table.items()))
        f.write_text(json.dumps(cur, indent=1) + "\n")
        print(f"wrote joint_text_gamma {gamma} to {f}", file=sys.stderr)


if __name__ == "__main__":
    main()
