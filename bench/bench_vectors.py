"""Vector search at scale: the lance store (IVF-HNSW-SQ and IVF-PQ) and the faiss store (HNSW) side by side.

For each size: vectors of the default model's dimensionality (the CNN and joint spaces are both 128-d),
synthetic but clustered like embeddings (2000 centres, each vector a centre plus noise, L2-normalised;
queries drawn the same way, not in the index), and the real library's CNN vectors when one is given
(`--real-library`, searched at its own size). Each store is built in a child process (build wall and CPU
time, peak RSS, disk), then opened from disk in a fresh child like a server would and queried one query
at a time (p50/p95 wall latency, recall@10 against exact inner-product search, the RSS of that process).
The stores are NELS's own (`nels.store.lance.LanceStore`, `nels.store.vectors.FaissStore`), with the
search settings swept.

    nice -n 10 python bench/bench_vectors.py --sizes 100000 300000 1000000 [--real-library DIR] \
        [--s3 N] [--workdir /tmp/bench-vectors] [--queries 200] > bench/results/vectors.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one query at a time, as a server thread runs it (bench/common.py)
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DIM = 128  # esc50-cnn: emb_dim 128; its joint space: dim 128
CENTRES = 2000
NOISE = 0.08  # per-coordinate noise around a unit centre: nearest neighbours at cosine ~0.5-0.6, like CNN embeddings
K = 10

# (name, store, build options, [search option sets])
STORES = [
    ("faiss-hnsw", "faiss", {"hnsw_threshold": 0}, [{"ef_search": 128}, {"ef_search": 256}]),
    ("lance-ivf-hnsw-sq", "lance", {"hnsw_threshold": 0, "lance_index": "IVF_HNSW_SQ"},
     [{"lance_nprobes": 10}, {"lance_nprobes": 20}, {"lance_nprobes": 40}]),
    ("lance-ivf-pq", "lance", {"hnsw_threshold": 0, "lance_index": "IVF_PQ"},
     [{"lance_nprobes": 20, "lance_refine": 10}, {"lance_nprobes": 40, "lance_refine": 10}]),
]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def du_mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 2 ** 20
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2 ** 20


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def synthetic(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = unit(rng.standard_normal((CENTRES, DIM)))
    rng = np.random.default_rng(seed)
    out = np.empty((n, DIM), np.float32)
    for s in range(0, n, 200_000):
        m = min(200_000, n - s)
        out[s:s + m] = unit(centres[rng.integers(0, CENTRES, m)] + NOISE * rng.standard_normal((m, DIM)))
    return out


def jittered(real: np.ndarray, n: int, seed: int, jitter: float = 0.15) -> np.ndarray:
    """n jittered copies of a real library's vectors (bench/bench_query.py's recipe: each vector a real one
    plus noise of norm ~0.15): many near-equidistant neighbours, the hard case for an ANN index."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, real.shape[1]), np.float32)
    for s in range(0, n, 200_000):
        m = min(200_000, n - s)
        x = real[rng.integers(0, len(real), m)]
        x = x + jitter * rng.standard_normal((m, real.shape[1])) / np.sqrt(real.shape[1])
        out[s:s + m] = unit(x)
    return out


def real_vectors(library: str) -> np.ndarray:
    from nels.store.catalogue import Catalogue

    cat = Catalogue(Path(library) / "nels.db")
    parts = [v for _, v in cat.iter_vectors("cnn")]
    cat.close()
    return np.concatenate(parts).astype(np.float32)


def exact_top(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    return index.search(queries, k)[1]


# -- children -------------------------------------------------------------------------------------------
def child_build(a) -> dict:
    from nels.store.vectors import open_store

    vecs = np.load(a.data, mmap_mode="r")
    ids = np.arange(len(vecs), dtype=np.int64)
    opts = json.loads(a.options)
    base_rss = rss_mb()
    w0, c0 = time.perf_counter(), time.process_time()
    if a.store == "faiss":
        store = open_store("faiss", a.path, DIM, **opts)
        store.build(ids, np.ascontiguousarray(vecs))
        store.flush()
        index_s = time.perf_counter() - w0
        load_s = 0.0
    else:
        store = open_store("lance", a.path, DIM, **{**opts, "hnsw_threshold": 10 ** 12})  # load first...
        for s in range(0, len(vecs), 250_000):
            store.add(ids[s:s + 250_000], np.ascontiguousarray(vecs[s:s + 250_000]))
        load_s = time.perf_counter() - w0
        store.hnsw_threshold = opts["hnsw_threshold"]
        store.build_index()  # ...then index once
        store.flush()
        index_s = time.perf_counter() - w0 - load_s
    return {"build_wall_s": time.perf_counter() - w0, "build_cpu_s": time.process_time() - c0,
            "load_s": load_s, "index_s": index_s, "build_peak_rss_mb": peak_mb(), "rss_before_mb": base_rss,
            "kind": store.kind}


def child_serve(a) -> dict:
    from nels.store.vectors import open_store

    if a.store == "lance":
        import lancedb  # noqa: F401 - imported before the clock starts (seconds), not in a FAISS process
    else:
        import faiss  # noqa: F401

    queries = np.load(a.query_file)
    truth = np.load(a.truth)
    base_rss = rss_mb()
    w0 = time.perf_counter()
    store = open_store(a.store, a.path, DIM, **json.loads(a.options))
    open_s = time.perf_counter() - w0
    for q in queries[:5]:  # warm up (first reads of the index files)
        store.search(q[None], K)
    lat, cpu, found = [], [], []
    for q in queries:
        t, c = time.perf_counter(), time.process_time()
        _, ids = store.search(q[None], K)
        lat.append((time.perf_counter() - t) * 1000)
        cpu.append((time.process_time() - c) * 1000)  # every thread of the process (Lance searches on several)
        found.append(ids[0])
    found = np.asarray(found)
    recall = float(np.mean([len(set(f.tolist()) & set(t.tolist())) / K for f, t in zip(found, truth)]))
    return {"p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
            "cpu_p50_ms": float(np.percentile(cpu, 50)), "cpu_p95_ms": float(np.percentile(cpu, 95)),
            "loadavg": os.getloadavg()[0],
            "recall_at_10": recall, "open_s": open_s, "serve_rss_mb": rss_mb(), "rss_before_mb": base_rss,
            "count": store.count(), "kind": store.kind}


def run_child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_dataset(name: str, base: np.ndarray, queries: np.ndarray, work: Path, stores) -> list[dict]:
    work.mkdir(parents=True, exist_ok=True)
    data, qfile, tfile = work / "base.npy", work / "queries.npy", work / "truth.npy"
    np.save(data, base)
    np.save(qfile, queries)
    np.save(tfile, exact_top(base, queries, K))
    rows = []
    for label, store, build_opts, search_opts in stores:
        path = work / label / "indexes" / "cnn"
        shutil.rmtree(work / label, ignore_errors=True)
        b = run_child(["--child", "build", "--store", store, "--path", str(path), "--data", str(data),
                       "--options", json.dumps(build_opts)])
        disk = du_mb(work / label)
        print(f"# {name} n={len(base)} {label}: built in {b['build_wall_s']:.1f} s wall"
              f" ({b['build_cpu_s']:.1f} s CPU), disk {disk:.0f} MB", file=sys.stderr, flush=True)
        for so in search_opts:
            s = run_child(["--child", "serve", "--store", store, "--path", str(path), "--query-file", str(qfile),
                           "--truth", str(tfile), "--options", json.dumps({**build_opts, **so})])
            row = {"dataset": name, "n": len(base), "store": label, "search": so, "disk_mb": disk, **b, **s}
            rows.append(row)
            print(json.dumps(row), flush=True)
        shutil.rmtree(work / label, ignore_errors=True)
    return rows


def bench_s3(n: int, queries: int, work: Path) -> list[dict]:
    """The default lance configuration with its table on an S3 server on loopback (moto's, from PyPI) vs on
    local disk: what the round trips to object storage cost a search (a real bucket adds network latency)."""
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=2)
                break
            except OSError:
                time.sleep(0.2)
        os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                          AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1")
        import boto3

        boto3.client("s3").create_bucket(Bucket="bench")
        work.mkdir(parents=True, exist_ok=True)
        data, qfile, tfile = work / "base.npy", work / "queries.npy", work / "truth.npy"
        base = synthetic(n, seed=1)
        np.save(data, base)
        q = synthetic(queries, seed=2)
        np.save(qfile, q)
        np.save(tfile, exact_top(base, q, K))
        rows = []
        opts = {"hnsw_threshold": 0}
        mirror = {"mirror": str(work / "mirror" / "cnn")}  # what a library on object storage passes
        built = {}
        for where, path, so in (("local", str(work / "local" / "indexes" / "cnn"), {}),
                                ("s3", "s3://bench/indexes/cnn", {}), ("s3-mirror", "s3://bench/indexes/cnn", mirror)):
            if path not in built:
                built[path] = run_child(["--child", "build", "--store", "lance", "--path", path, "--data", str(data),
                                         "--options", json.dumps(opts)])
            s = run_child(["--child", "serve", "--store", "lance", "--path", path, "--query-file", str(qfile),
                           "--truth", str(tfile), "--options", json.dumps({**opts, **so})])
            row = {"dataset": "synthetic", "n": n, "store": f"lance-default-{where}", **built[path], **s}
            rows.append(row)
            print(json.dumps(row), flush=True)
        return rows
    finally:
        server.terminate()
        server.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="*", default=[100_000, 300_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--real-library", default=None, help="a library whose CNN vectors are also searched")
    ap.add_argument("--stores", nargs="+", default=[s[0] for s in STORES])
    ap.add_argument("--jittered", type=int, nargs="*", default=[],
                    help="sizes of jittered copies of the real library's vectors (needs --real-library)")
    ap.add_argument("--bases", type=int, default=0,
                    help="jitter only this many real vectors: n/bases copies each, the neighbourhood density of a"
                         " larger set (100k copies of 130 vectors ~ 1M copies of the 1302 of ESC-50 fold 1)")
    ap.add_argument("--workdir", default="/tmp/bench-vectors")
    ap.add_argument("--s3", type=int, default=0, help="also the default lance store on a loopback S3 server, N vectors")
    ap.add_argument("--child", choices=["build", "serve"])
    ap.add_argument("--store"), ap.add_argument("--path"), ap.add_argument("--data")
    ap.add_argument("--truth"), ap.add_argument("--query-file"), ap.add_argument("--options", default="{}")
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child_build(a) if a.child == "build" else child_serve(a)))
        return
    stores = [s for s in STORES if s[0] in a.stores]
    work = Path(a.workdir)
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu}, {os.cpu_count()} cores, dim {DIM}",
          file=sys.stderr, flush=True)
    if a.real_library:
        real = real_vectors(a.real_library)
        if a.bases:
            real = real[np.random.default_rng(3).permutation(len(real))[:a.bases]]
        rng = np.random.default_rng(1)
        pick = rng.permutation(len(real))
        nq = min(a.queries, len(real) // 5)
        if not a.jittered:
            bench_dataset("real", real[pick[nq:]], real[pick[:nq]], work / "real", stores)
        for n in a.jittered:
            bench_dataset(f"real-jittered{f' ({a.bases} bases)' if a.bases else ''}", jittered(real, n, seed=1),
                          jittered(real, a.queries, seed=2), work / f"jit-{n}-{a.bases}", stores)
    if a.s3:
        bench_s3(a.s3, a.queries, work / f"s3-{a.s3}")
    for n in a.sizes:
        bench_dataset("synthetic", synthetic(n, seed=1), synthetic(a.queries, seed=2), work / f"syn-{n}", stores)


if __name__ == "__main__":
    main()
