"""Text search latency with and without the coverage-weighted fusion of several classifiers, alternated query by
query in one process on one library (calibration.json's coverage_gamma removed / restored): CPU time per query.

    python bench/bench_fusion_latency.py --library BIG [--queries 100] [--mode linguistic]
"""
from __future__ import annotations

import argparse
import json

import time

from common import ROOT, pct

from nels.library import Library  # noqa: E402
from nels.search import coverage as coverage_mod


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--library", required=True)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--mode", default="linguistic")
    a = ap.parse_args()
    lib = Library(a.library, create=False)
    rel = coverage_mod.calibration()["relevance"]
    gamma = rel["coverage_gamma"]
    texts = [q["text"] for q in json.loads((ROOT / "nels/data/eval/paraphrases.json").read_text())["queries"]]
    lib.search(text="warm up", k=10, mode=a.mode)
    print(f"library: {lib.stats()['segments']} segments, classifiers {len(lib.prob_matrices())}, mode {a.mode}")
    cpu = {"before": [], "coverage-weighted": []}
    for q in texts[: a.queries]:
        for name, g in (("before", None), ("coverage-weighted", gamma)):
            if g is None:
                rel.pop("coverage_gamma", None)
            else:
                rel["coverage_gamma"] = g
            lib.search(text=q, k=10, mode=a.mode, log_weak=False)  # MiniLM's cache warm: the fusion is measured
            c = time.process_time()
            lib.search(text=q, k=10, mode=a.mode, log_weak=False)
            cpu[name].append(time.process_time() - c)
    rel["coverage_gamma"] = gamma
    for name, v in cpu.items():
        print(f"{name:<18} CPU p50 {pct(v, 50):6.1f} ms  p95 {pct(v, 95):6.1f} ms  ({len(v)} queries)")


if __name__ == "__main__":
    main()
