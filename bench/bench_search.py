"""Search latency through Library.search (encoding included), on a library of any size.

Text queries (class names and paraphrases) and 5 s audio queries (ESC-50 files: decoding and
encoding included), every mode the library supports. One process, sequential queries.

    python bench/bench_search.py --library BIG [--queries 100]
"""
from __future__ import annotations

import argparse
import json
import time

from common import ROOT, esc50, pct

from nels.index.library import Library  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--library", required=True)
    ap.add_argument("--queries", type=int, default=100)
    a = ap.parse_args()
    lib = Library(a.library, create=False)
    from nels.models import joint

    texts = [q["text"] for q in json.loads((ROOT / "nels/data/eval/paraphrases.json").read_text())["queries"]]
    audios = sorted((esc50() / "audio").iterdir())[::7]
    modes_t = ["linguistic"] + (["joint", "fused"] if joint.library_has_joint(lib) else [])
    modes_a = ["acoustic"] + (["joint", "fused"] if joint.library_has_joint(lib) else [])
    lib.search(text="warm up", k=10)
    lib.search(audio=audios[0], k=10)
    print(f"library: {lib.stats()['segments']} segments")
    for m in modes_t:
        lat = []
        for q in texts[: a.queries]:
            t = time.perf_counter()
            lib.search(text=q, mode=m, k=10)
            lat.append(time.perf_counter() - t)
        print(f"text  {m:<10} p50 {pct(lat, 50):6.1f} ms  p95 {pct(lat, 95):6.1f} ms  ({len(lat)} queries)")
    for m in modes_a:
        lat = []
        for f in audios[: a.queries]:
            t = time.perf_counter()
            lib.search(audio=f, mode=m, k=10)
            lat.append(time.perf_counter() - t)
        print(f"audio {m:<10} p50 {pct(lat, 50):6.1f} ms  p95 {pct(lat, 95):6.1f} ms  ({len(lat)} queries of 5 s)")


if __name__ == "__main__":
    main()
