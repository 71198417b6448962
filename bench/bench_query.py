"""Query-by-example latency over 10k / 100k / 1M segment vectors, with the index's recall@10 vs exact.

Vectors are synthetic (clustered, unit-norm, 128-d like the CNN embedding); the library's own
FaissStore picks exact search below its threshold and HNSW above. One core.

    python bench/bench_query.py [--sizes 10000 100000 1000000] [--queries 300]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from common import one_core, pct

one_core()

from nels.index.vectors import FaissStore  # noqa: E402


def clustered(n, dim, rng, centers=2000):
    c = rng.standard_normal((centers, dim)).astype(np.float32)
    x = c[rng.integers(0, centers, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--dim", type=int, default=128)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    for n in a.sizes:
        x = clustered(n, a.dim, rng)
        q = x[rng.integers(0, n, a.queries)] + 0.3 * rng.standard_normal((a.queries, a.dim)).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        ids = np.arange(n, dtype=np.int64)
        store = FaissStore(a.dim)
        t = time.perf_counter()
        store.build(ids, x)
        build = time.perf_counter() - t
        exact = FaissStore(a.dim, hnsw_threshold=10 ** 12)
        exact.build(ids, x)
        lat, found = [], []
        for v in q:
            t = time.perf_counter()
            _, i = store.search(v[None], 10)
            lat.append(time.perf_counter() - t)
            found.append(i[0])
        elat = []
        truth = []
        for v in q[:100]:
            t = time.perf_counter()
            _, i = exact.search(v[None], 10)
            elat.append(time.perf_counter() - t)
            truth.append(i[0])
        recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
        print(f"n={n:>8} index={store.kind:<5} build={build:6.1f}s  p50={pct(lat, 50):6.2f} ms"
              f"  p95={pct(lat, 95):6.2f} ms  recall@10={recall:.3f}  (exact: p50={pct(elat, 50):.2f} ms"
              f" p95={pct(elat, 95):.2f} ms)", flush=True)


if __name__ == "__main__":
    main()
