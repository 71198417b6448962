"""Does making the shown relevance non-increasing in rank (pool adjacent violators) keep it calibrated?

    python3 bench/relevance_order_check.py LIBRARY

LIBRARY: the ESC-50 fold-1 demo library (`nels demo --no-serve`: CNN + YAMNet + joint space). Queries: fold 1's
151 paraphrases (nels/data/eval/paraphrases.json) and the 50 class names, the default (fused) mode, the top 50
clips of each; relevant = the clip's ESC-50 class. Prints ECE (10 bins) and Brier of the relevance as the
ranking's own order would show it without and with `calibration.non_increasing`, and how many pairs of shown
results were out of order. Nothing is fitted here.
"""
import csv
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nels.library import Library  # noqa: E402



def ece(p, y, bins=10):
    p, y = np.asarray(p), np.asarray(y)
    e = 0.0
    for b in range(bins):
        m = (p >= b / bins) & (p < (b + 1) / bins + (b == bins - 1))
        if m.any():
            e += m.mean() * abs(p[m].mean() - y[m].mean())
    return e


lib = Library(sys.argv[1], create=False)
meta = {}
for r in csv.DictReader(open(Path(__file__).resolve().parents[2] / 'shared/datasets/esc50/meta/esc50.csv')):
    meta[r['filename'].rsplit('.', 1)[0] + '.flac'] = r['category']
qfile = json.load(open(Path(__file__).resolve().parents[1] / 'nels/data/eval/paraphrases.json'))['queries']
queries = [(q['text'], q['class'] if 'class' in q else q.get('label')) for q in qfile]
names = sorted(set(meta.values()))
queries += [(n.replace('_', ' '), n) for n in names]
from nels.search import calibration  # noqa: E402


def shown(text: str, pooled: bool) -> list[dict]:
    """The top 50 clips of the default mode, with the relevance as search shows it (pooled) or as the relevance
    model gives it, unpooled (non_increasing replaced by the identity for the call)."""
    if pooled:
        return lib.search(text=text, k=50)
    keep = calibration.non_increasing
    calibration.non_increasing = lambda v: np.asarray(v, dtype=np.float64)
    try:
        return lib.search(text=text, k=50)
    finally:
        calibration.non_increasing = keep


P0, P1, Y, out_of_order, pairs = [], [], [], 0, 0
for text, cls in queries:
    raw, pooled = shown(text, False), shown(text, True)
    assert [x["segment_id"] for x in raw] == [x["segment_id"] for x in pooled]  # the ranking is not changed
    rel = [x["relevance"] for x in raw]
    if not rel or None in rel:
        continue
    out_of_order += sum(1 for i in range(len(rel)) for j in range(i + 1, len(rel)) if rel[j] > rel[i] + 0.05)
    pairs += len(rel) * (len(rel) - 1) // 2
    Y += [int(meta.get(str(x["source"]).split("/")[-1]) == cls) for x in raw]
    P0 += rel
    P1 += [x["relevance"] for x in pooled]
P0, P1, Y = map(np.array, (P0, P1, Y))
print(f"rows {len(Y)} queries {len(queries)} share relevant {Y.mean():.3f}; pairs of shown results out of order"
      f" by > 0.05 without pooling: {out_of_order}/{pairs} ({out_of_order / max(pairs, 1):.3f})")
for name, P in (("relevance model alone", P0), ("non-increasing (shown)", P1)):
    print(f"{name:24s} ECE {ece(P, Y):.4f}  Brier {np.mean((P - Y) ** 2):.4f}  mean {P.mean():.3f}")
