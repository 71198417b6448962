"""Search latency of two versions of NELS on one library, query by query in turn (a paired before/after).

On a machine that other jobs share, two runs one after the other measure two different loads. Here each tree
(a checkout of NELS, e.g. `git worktree add /tmp/before COMMIT`) runs in its own process, both warmed up, and
every query is asked of both, one after the other in a random order, while the other process waits: each
pair of measurements sees the same load. The queries and modes are bench_search.py's (text: the repo
paraphrases; audio: 5 s ESC-50 files, decoding and encoding included; each text query pays its MiniLM
encoding). Wall and CPU time (process time, all threads) per query, p50 / p95 per tree, and the median of the
paired differences.

    python bench/bench_search_paired.py --library BIG --trees /tmp/before . [--queries 100] [--gc-freeze]
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

WORKER = r"""
import gc, json, sys, time
root, library, freeze = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
sys.path.insert(0, root)
from pathlib import Path
from nels.library import Library
from nels.encoders.text import shared_text_encoder
lib = Library(library, create=False)
audio0 = sys.argv[4]
lib.search(text="warm up", k=10)
lib.search(audio=Path(audio0), k=10)
if freeze:
    gc.collect()
    gc.freeze()
te = shared_text_encoder()
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    q = json.loads(line)
    kw = {"text": q["text"]} if "text" in q else {"audio": Path(q["audio"])}
    with te._lock:
        te._cache.pop(q.get("text"), None)  # every query pays its MiniLM encoding
    w, c = time.perf_counter(), time.process_time()
    res = lib.search(mode=q["mode"], k=10, **kw)
    w, c = time.perf_counter() - w, time.process_time() - c
    print(json.dumps({"wall": w, "cpu": c, "ids": [r["segment_id"] for r in res]}), flush=True)
"""


def pct(xs, q) -> float:
    return float(np.percentile(np.asarray(xs) * 1000, q))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--library", required=True)
    ap.add_argument("--trees", nargs=2, required=True, help="two NELS checkouts: before, after")
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--modes", default="text:linguistic,text:joint,text:fused,audio:acoustic,audio:joint,audio:fused")
    ap.add_argument("--gc-freeze", action="store_true", help="gc.freeze() after the warm-up in both processes")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import ROOT, esc50

    texts = [q["text"] for q in json.loads((ROOT / "nels/data/eval/paraphrases.json").read_text())["queries"]]
    audios = sorted((esc50() / "audio").iterdir())[::7]
    procs = []
    for tree in a.trees:
        p = subprocess.Popen([sys.executable, "-c", WORKER, str(Path(tree).resolve()), a.library,
                              "1" if a.gc_freeze else "0", str(audios[0])],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=tree)
        procs.append(p)
    for p in procs:  # warmed up one after the other would be fairer, but both wait for the first query anyway
        while True:
            line = p.stdout.readline()
            if not line:
                sys.exit("a worker died during its warm-up")
            if line.startswith("{") and json.loads(line).get("ready"):
                break
    rng = random.Random(a.seed)
    names = ["before", "after"]
    print(f"library {a.library}; trees: before {a.trees[0]}, after {a.trees[1]}; {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC;"
          f" load {open('/proc/loadavg').read().split()[:3]}" + ("; gc.freeze() after warm-up" if a.gc_freeze else ""))
    differ = 0
    for spec in a.modes.split(","):
        kind, mode = spec.split(":")
        qs = [{"text": t} for t in texts[: a.queries]] if kind == "text" else \
            [{"audio": str(f)} for f in audios[: a.queries]]
        got = {0: {"wall": [], "cpu": []}, 1: {"wall": [], "cpu": []}}
        for q in qs:
            order = [0, 1] if rng.random() < 0.5 else [1, 0]
            ids = {}
            for i in order:
                procs[i].stdin.write(json.dumps({**q, "mode": mode}) + "\n")
                procs[i].stdin.flush()
                r = json.loads(procs[i].stdout.readline())
                got[i]["wall"].append(r["wall"])
                got[i]["cpu"].append(r["cpu"])
                ids[i] = r["ids"]
            differ += ids[0] != ids[1]
        for i in (0, 1):
            print(f"{kind:<5} {mode:<10} {names[i]:<6} wall p50 {pct(got[i]['wall'], 50):6.1f} p95 {pct(got[i]['wall'], 95):6.1f} ms"
                  f" | CPU p50 {pct(got[i]['cpu'], 50):6.1f} p95 {pct(got[i]['cpu'], 95):6.1f} ms ({len(qs)} queries)")
        d = np.asarray(got[1]["cpu"]) - np.asarray(got[0]["cpu"])
        dw = np.asarray(got[1]["wall"]) - np.asarray(got[0]["wall"])
        print(f"{'':<17} after - before, median of pairs: wall {np.median(dw) * 1000:+.1f} ms, CPU {np.median(d) * 1000:+.1f} ms"
              f"  (load {open('/proc/loadavg').read().split()[0]})", flush=True)
    print(f"result ids differ between the trees on {differ} queries")
    for p in procs:
        p.stdin.close()
        p.wait()


if __name__ == "__main__":
    main()
