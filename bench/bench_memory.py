"""Peak memory while ingesting a long file: 10 minutes vs 1 hour (flat means streaming works).

Each ingest runs in a fresh subprocess; peak RSS comes from getrusage. The files are synthesised
(noise bursts and tones at 16 kHz, 16-bit WAV: 115 MB for the hour).

    python bench/bench_memory.py [--model baseline|default]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
from nels.library import Library
from nels.ingest.runner import IngestOptions, ingest
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
lib = Library(sys.argv[1])
t = time.perf_counter()
rep = ingest(lib, [sys.argv[2]], model=sys.argv[3], options=IngestOptions(progress=False))
print(json.dumps({{"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "wall": time.perf_counter() - t,
                  "added": len(rep.added), "failed": rep.failed, "segments": lib.stats()["segments"]}}))
"""


def write_long(path: Path, minutes: float) -> None:
    rng = np.random.default_rng(0)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        for i in range(int(minutes * 6)):  # 10 s blocks
            t = np.arange(160000) / 16000
            x = 0.2 * np.sin(2 * np.pi * (200 + 50 * (i % 20)) * t) + 0.05 * rng.standard_normal(t.size)
            w.writeframes((x * 32767).astype("<i2").tobytes())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="baseline")
    a = ap.parse_args()
    root = str(Path(__file__).resolve().parents[1])
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in (10, 60):
            f = Path(tmp) / f"{minutes}min.wav"
            write_long(f, minutes)
            out = subprocess.run([sys.executable, "-c", CHILD.format(root=root), f"{tmp}/lib{minutes}", str(f), a.model],
                                 capture_output=True, text=True)
            if out.returncode:
                sys.exit(out.stderr)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{minutes:>3} min file ({f.stat().st_size / 1e6:.0f} MB): peak RSS {r['peak_mb']:.0f} MB,"
                  f" {r['segments']} segments, {minutes * 60 / r['wall']:.0f}x real time", flush=True)


if __name__ == "__main__":
    main()
