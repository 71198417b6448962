"""Query-by-example latency over 10k / 100k / 1M segment vectors, with the index's recall@10 vs exact.

Vectors: jittered copies of a real library's segment embeddings (--from-library; the realistic case),
else synthetic clustered unit vectors (a hard case for HNSW: near-equidistant neighbours). The
library's own FaissStore picks exact search below its threshold (200k) and HNSW above; for HNSW the
efSearch sweep shows the latency/recall trade-off. One core, one query at a time.

    python bench/bench_query.py [--from-library LIB --space cnn] [--sizes 10000 100000 1000000]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from common import one_core, pct

one_core()

from nels.store.vectors import FaissStore  # noqa: E402


def clustered(n, dim, rng, centers=2000):
    c = rng.standard_normal((centers, dim)).astype(np.float32)
    x = c[rng.integers(0, centers, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def from_library(path, space, n, rng, jitter=0.15):
    from nels.library import Library

    lib = Library(path, create=False)
    rows = lib.conn.execute("SELECT vec FROM vectors WHERE space=?", (space,)).fetchall()
    base = np.stack([np.frombuffer(r[0], np.float32) for r in rows])
    x = base[rng.integers(0, len(base), n)] + jitter * rng.standard_normal((n, base.shape[1])).astype(np.float32) / np.sqrt(base.shape[1])
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def measure(store, q, k=10):
    lat, found = [], []
    for v in q:
        t = time.perf_counter()
        _, i = store.search(v[None], k)
        lat.append(time.perf_counter() - t)
        found.append(i[0])
    return lat, found


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--from-library", default=None)
    ap.add_argument("--space", default="cnn")
    ap.add_argument("--ef", type=int, nargs="+", default=[64, 128, 256, 512])
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    for n in a.sizes:
        x = from_library(a.from_library, a.space, n, rng) if a.from_library else clustered(n, a.dim, rng)
        dim = x.shape[1]
        qi = rng.integers(0, n, a.queries)
        q = x[qi] + 0.05 * rng.standard_normal((a.queries, dim)).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        ids = np.arange(n, dtype=np.int64)
        exact = FaissStore(dim, hnsw_threshold=10 ** 12)
        exact.build(ids, x)
        elat, truth = measure(exact, q)
        store = FaissStore(dim)
        t = time.perf_counter()
        store.build(ids, x)
        build = time.perf_counter() - t
        print(f"n={n:>8} exact: p50 {pct(elat, 50):6.2f} ms  p95 {pct(elat, 95):6.2f} ms", flush=True)
        if store.kind == "exact":
            continue
        import faiss

        for ef in a.ef:
            faiss.downcast_index(store.index.index).hnsw.efSearch = ef
            lat, found = measure(store, q)
            recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
            print(f"n={n:>8} hnsw (M=32, build {build:.0f} s) efSearch={ef:<4} p50 {pct(lat, 50):6.2f} ms"
                  f"  p95 {pct(lat, 95):6.2f} ms  recall@10 {recall:.3f}", flush=True)


if __name__ == "__main__":
    main()
