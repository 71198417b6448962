"""Shared by the benchmarks: where ESC-50 is, one-core pinning, percentiles."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def esc50() -> Path:
    for c in (os.environ.get("NELS_ESC50"), ROOT.parent / "shared" / "datasets" / "esc50",
              ROOT / "shared" / "datasets" / "esc50"):
        if c and (Path(c) / "meta" / "esc50.csv").exists():
            return Path(c)
    sys.exit("ESC-50 not found: set NELS_ESC50 (benchmarks use ../shared/datasets/esc50)")


def one_core() -> None:
    """Pin this process (and torch/BLAS) to a single core, for 'x real time on one core' figures."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    except (AttributeError, OSError):
        pass
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    try:
        import faiss

        faiss.omp_set_num_threads(1)
    except ImportError:
        pass


def pct(xs, q) -> float:
    return float(np.percentile(np.asarray(xs) * 1000, q))


def encode_queries_once() -> None:
    """Make search encode each audio query once per encoder in this process (encoding is deterministic): an
    evaluation that searches one sound in several modes, or before and after a change, pays its encoding once."""
    import hashlib

    from nels.search import query

    original = query.encode_query_windows
    memo: dict = {}

    def encode_once(encoder, x, sr=16000):
        key = (encoder.name, id(encoder), int(sr), x.shape, hashlib.blake2b(x.tobytes(), digest_size=16).hexdigest())
        if key not in memo:
            memo[key] = original(encoder, x, sr)
        return memo[key]

    query.encode_query_windows = encode_once
