"""What `nels ingest --in-place` saves, and what checking the originals costs (issue 18, section 6).

    python3 bench/bench_in_place.py [--n 80] [--model default] [--repeat 5]

Ingests the first N clips of ESC-50 fold 1 (`bench/common.esc50()`) twice, into fresh libraries in a temporary
folder, with the `nels ingest` command: copied (the default) and kept in place. Prints the audio's size, each library's size and its media
folder's, then the CPU time of `Library.check_originals` (what `nels stats` runs: a stat per original) and of
`check_originals(rehash=True)` (what `nels check --hash` adds: the SHA-256 of every original), medians of
--repeat runs.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, esc50

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cli import cpu_name  # noqa: E402


def size_of(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=80, help="clips of ESC-50 fold 1 (default 80)")
    ap.add_argument("--model", default="default", help="the libraries' model (default: the shipped CNN + joint)")
    ap.add_argument("--repeat", type=int, default=5, help="runs per timing (median)")
    args = ap.parse_args()

    from nels.library import Library

    files = sorted((esc50() / "audio").glob("1-*"))[: args.n]
    out: dict = {"cpu": cpu_name(), "clips": len(files), "model": args.model,
                 "audio_bytes": sum(f.stat().st_size for f in files)}
    with tempfile.TemporaryDirectory(prefix="nels-in-place-") as tmp:
        audio = Path(tmp) / "audio"
        audio.mkdir()
        for f in files:
            shutil.copyfile(f, audio / f.name)
        for name, flags in (("copied", []), ("in_place", ["--in-place"])):
            # the real command, in its own process: the sizes are those of a library at rest (WAL checkpointed)
            run = subprocess.run([sys.executable, "-m", "nels.cli", "--library", str(Path(tmp) / name), "ingest",
                                  str(audio), "--model", args.model, "--json", *flags], capture_output=True, text=True,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
            assert json.loads(run.stdout)["added"] == len(files), run.stdout
            out[name] = {"library_bytes": size_of(Path(tmp) / name), "media_bytes": size_of(Path(tmp) / name / "media")}
        with Library(Path(tmp) / "in_place", create=False) as lib:
            for rehash in (False, True):
                cpu = []
                for _ in range(args.repeat):
                    t = time.process_time()
                    got = lib.check_originals(rehash)
                    cpu.append(time.process_time() - t)
                assert got["clips"] == len(files) and not got["missing"] and not got["changed"], got
                out["check_rehash_ms" if rehash else "check_stat_ms"] = round(statistics.median(cpu) * 1000, 2)
    mb = lambda b: f"{b / 1e6:.1f} MB"  # noqa: E731
    print(f"{out['cpu']}; {out['clips']} ESC-50 clips, {mb(out['audio_bytes'])} of audio, model {out['model']}")
    for name in ("copied", "in_place"):
        print(f"  {name:9s} library {mb(out[name]['library_bytes'])} (media/ {mb(out[name]['media_bytes'])})")
    print(f"  check_originals: {out['check_stat_ms']} ms CPU (stat), {out['check_rehash_ms']} ms CPU (SHA-256 of all)")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
