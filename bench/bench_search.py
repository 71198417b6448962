"""Search latency through Library.search (encoding included), on a library of any size.

Wall and CPU time per query. Text queries (class names and paraphrases) and 5 s audio queries (ESC-50 files: decoding and
encoding included), every mode the library supports. One process, sequential queries.

    python bench/bench_search.py --library BIG [--queries 100]
"""
from __future__ import annotations

import argparse
import json
import time

from common import ROOT, esc50, pct

from nels.library import Library  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--library", required=True)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--gc-freeze", action="store_true",
                    help="after the warm-up, move what it loaded out of the garbage collector's scans (gc.freeze), as"
                         " `nels serve` does after its warm-up (nels.web.state.AppState.warm)")
    a = ap.parse_args()
    lib = Library(a.library, create=False)
    from nels.search import joint

    texts = [q["text"] for q in json.loads((ROOT / "nels/data/eval/paraphrases.json").read_text())["queries"]]
    audios = sorted((esc50() / "audio").iterdir())[::7]
    modes_t = ["linguistic"] + (["joint", "fused"] if joint.library_has_joint(lib) else [])
    modes_a = ["acoustic"] + (["joint", "fused"] if joint.library_has_joint(lib) else [])
    lib.search(text="warm up", k=10)
    lib.search(audio=audios[0], k=10)
    if a.gc_freeze:
        import gc

        gc.freeze()
    print(f"library: {lib.stats()['segments']} segments" + (", gc.freeze() after the warm-up" if a.gc_freeze else ""))
    runs = [("text", m, [{"text": q} for q in texts[: a.queries]], "") for m in modes_t]
    runs += [("audio", m, [{"audio": f} for f in audios[: a.queries]], " of 5 s") for m in modes_a]
    from nels.encoders.text import shared_text_encoder

    te = shared_text_encoder()
    for kind, m, queries, what in runs:
        # every mode pays its own MiniLM encoding: forget the texts the previous mode's run cached
        with te._lock:
            for q in queries:
                te._cache.pop(q.get("text"), None)
        lat, cpu = [], []
        for q in queries:
            t, c = time.perf_counter(), time.process_time()
            lib.search(mode=m, k=10, **q)
            lat.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        # CPU time (all threads of this process) next to wall time: on a shared, loaded machine wall time
        # mostly measures the wait for a core
        print(f"{kind:<5} {m:<10} p50 {pct(lat, 50):6.1f} ms  p95 {pct(lat, 95):6.1f} ms  |  CPU p50 {pct(cpu, 50):6.1f} ms"
              f"  p95 {pct(cpu, 95):6.1f} ms  ({len(lat)} queries{what})")


if __name__ == "__main__":
    main()
