"""Every result of a fixed set of searches, to check that a speed change leaves rankings untouched.

Text queries (the repo paraphrases) and 5 s ESC-50 audio queries, every mode the library supports and the default
(mode None): per query, the results' segment ids, scores, relevances, parts and explanations, the notice, the
coverage and the query labels, as JSON. Run it with the code before and after a change and compare the files:

    python bench/search_fingerprint.py --library BIG --out before.json [--queries 40]
    python bench/search_fingerprint.py --library BIG --out after.json
    python bench/search_fingerprint.py --compare before.json after.json
"""
from __future__ import annotations

import argparse
import json
import sys

from common import ROOT, esc50

from nels.library import Library  # noqa: E402


def fingerprint(lib, queries: int, k: int) -> dict:
    from nels.search import joint

    texts = [q["text"] for q in json.loads((ROOT / "nels/data/eval/paraphrases.json").read_text())["queries"]]
    audios = sorted((esc50() / "audio").iterdir())[::7]
    extra = ["guitar", "asdfgh qwerty", "a dog barking in the rain", "church bells"]
    has_joint = joint.library_has_joint(lib)
    modes_t = [None, "linguistic"] + (["joint", "fused"] if has_joint else [])
    modes_a = [None, "acoustic"] + (["joint", "fused"] if has_joint else [])
    out = {}
    for kind, qs, modes in (("text", texts[:queries] + extra, modes_t), ("audio", audios[:queries], modes_a)):
        for q in qs:
            for m in modes:
                res = lib.search(mode=m, k=k, **({"text": q} if kind == "text" else {"audio": q}))
                d = res.to_dict()
                for r in d["results"]:
                    r.pop("media_url", None)
                out[f"{kind}|{q if kind == 'text' else q.name}|{m}"] = d
    return out


def compare(a: dict, b: dict) -> int:
    bad = 0
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            bad += 1
            if bad <= 10:
                ra, rb = (a.get(key) or {}).get("results", []), (b.get(key) or {}).get("results", [])
                print(f"DIFFERS {key}: ids {[r['segment_id'] for r in ra]} vs {[r['segment_id'] for r in rb]}")
                for x, y in zip(ra, rb):
                    if x != y:
                        print("   ", {f: (x[f], y.get(f)) for f in x if x[f] != y.get(f)})
                        break
                for f in ("notice", "coverage", "query_labels", "suggested_tags", "related_words", "calibration"):
                    if (a.get(key) or {}).get(f) != (b.get(key) or {}).get(f):
                        print(f"    {f}: {(a.get(key) or {}).get(f)} vs {(b.get(key) or {}).get(f)}")
    print(f"{len(set(a) | set(b))} searches, {bad} differ")
    return bad


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--library")
    ap.add_argument("--out")
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--compare", nargs=2)
    a = ap.parse_args()
    if a.compare:
        x, y = (json.loads(open(f).read()) for f in a.compare)
        sys.exit(1 if compare(x, y) else 0)
    lib = Library(a.library, create=False)
    with open(a.out, "w") as f:
        json.dump(fingerprint(lib, a.queries, a.k), f, sort_keys=True)


if __name__ == "__main__":
    main()
