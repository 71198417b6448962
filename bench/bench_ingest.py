"""Ingest throughput on ESC-50, one core: decode + segment + features + embedding + store, in x real time.

    python bench/bench_ingest.py [--model baseline|default] [--clips 400]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time

from common import esc50, one_core

one_core()

try:
    from nels.library import Library  # noqa: E402
except ImportError:  # a checkout from before the re-layering (to compare in one run)
    from nels.index.library import Library  # noqa: E402
from nels.ingest.runner import IngestOptions, ingest  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="baseline")
    ap.add_argument("--clips", type=int, default=400)
    a = ap.parse_args()
    files = sorted(str(p) for p in (esc50() / "audio").iterdir())[: a.clips]
    tmp = tempfile.mkdtemp()
    try:
        lib = Library(f"{tmp}/lib")
        # warm-up (imports, model load) on 5 clips, then measure a fresh library
        ingest(lib, files[:5], model=a.model, options=IngestOptions(progress=False))
        lib.close()
        shutil.rmtree(f"{tmp}/lib")
        lib = Library(f"{tmp}/lib")
        t, c = time.perf_counter(), time.process_time()
        rep = ingest(lib, files, model=a.model, options=IngestOptions(progress=False))
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        st = lib.stats()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"model={a.model} clips={len(rep.added)} audio={rep.seconds_of_audio:.0f}s segments={st['segments']}"
          f" wall={wall:.2f}s -> {rep.seconds_of_audio / wall:.0f}x real time on one core;"
          f" cpu={cpu:.2f}s -> {rep.seconds_of_audio / cpu:.0f}x per CPU-second (less sensitive to a busy machine)")


if __name__ == "__main__":
    main()
