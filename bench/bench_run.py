"""`nels run` on the loopback video site (synthesised tones, the shipped CNN) for --cycles cycles, in a subprocess,
with `nels serve` beside it on the same library answering a stream of text searches the whole time.

Prints one JSON object: per step, wall and CPU seconds (from run.log, mean over cycles); promotions/rejections;
searches answered and failed in all and while a re-index step ran (staging + swap), and whether the served
model changed without a restart.

    nice -n 10 python3 bench/bench_run.py --cycles 3
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NELS_MODEL", "default")

import numpy as np  # noqa: E402

from devserver import Server  # noqa: E402
from videosite import VideoSite, synthetic_videos, tone_folders  # noqa: E402

CLASSES = {"low hum": 200.0, "whistle": 2500.0, "beep": 800.0, "buzz": 120.0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=3)
    ap.add_argument("--per-class", type=int, default=8, help="videos per class on the site")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nels-bench-run-"))
    tone_folders(work, CLASSES, {"seed": 3, "heldout": 4})
    site = VideoSite(synthetic_videos(CLASSES, per_class=a.per_class, distractors=4, seed=3))
    site.start()
    env = {**os.environ, "NELS_YTDLP_SEARCH": site.search_template, "PYTHONPATH": str(ROOT)}
    lib = work / "lib"
    from nels.ingest.runner import ingest
    from nels.store.library import Library

    with Library(lib) as L:  # a served library needs something in it: the seed clips of one class
        ingest(L, [str(work / "seed" / "low hum")], model="default")
    srv = Server(lib).start(timeout=600)
    log: list[tuple[float, int]] = []  # (monotonic time, HTTP status)
    stop = threading.Event()

    def hammer():
        i = 0
        while not stop.is_set():
            i += 1
            q = urllib.parse.urlencode({"q": ["whistle", "low hum", "beep", "buzz"][i % 4], "k": 1 + i % 30})
            try:
                with urllib.request.urlopen(f"{srv.url}/api/search?{q}", timeout=120) as r:
                    r.read()
                    log.append((time.time(), r.status))
            except urllib.error.HTTPError as e:
                log.append((time.time(), e.code))
            except OSError:
                log.append((time.time(), 0))

    th = threading.Thread(target=hammer, daemon=True)
    th.start()
    t0, c0 = time.time(), time.process_time()
    proc = subprocess.run([sys.executable, "-m", "nels.cli", "--library", str(lib), "run", "--dataset",
                           str(work / "seed"), "--format", "folders", "--heldout", str(work / "heldout"),
                           "--allow-private", "--learn-every", "0", "--pause", "0", "--rate", "100", "--per-cycle", "12",
                           "--iterations", "2", "--cycles", str(a.cycles), "--quiet"],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    stop.set()
    th.join()
    with urllib.request.urlopen(f"{srv.url}/api/stats", timeout=120) as r:
        served = json.loads(r.read()).get("classifier")
    srv.stop()
    site.stop()
    rows = [json.loads(x) for x in (lib / "run.log").read_text().splitlines()]
    steps = {}
    for r in rows:
        if "step" in r:
            steps.setdefault(r["step"], []).append(r)
    # a re-index step's span: from its end minus its wall seconds, to its end
    spans = [(r["t"] - r["seconds"], r["t"]) for r in steps.get("reindex", []) if r["status"] == "done"]
    during = [s for t, s in log if any(a0 <= t <= a1 for a0, a1 in spans)]
    with Library(lib) as L:
        versions = L.catalogue.model_versions()
        model_name = L.get_meta("model_name")
    print(json.dumps({
        "cycles": a.cycles, "exit": proc.returncode, "wall_s": round(time.time() - t0, 1),
        "steps": {k: {"wall_s": round(float(np.mean([r["seconds"] for r in v])), 2),
                      "cpu_s_of_run_process": round(float(np.mean([r["cpu_seconds"] for r in v])), 2),
                      "statuses": [r["status"] for r in v]} for k, v in steps.items()},
        "promoted": [v["name"] for v in versions if v["status"] in ("serving", "retired") and v["cycle"]],
        "rejected": [(v["name"], v["reason"]) for v in versions if v["status"] == "rejected"],
        "searches": len(log), "failed": sum(s != 200 for _, s in log),
        "searches_during_reindex": len(during), "failed_during_reindex": sum(s != 200 for s in during),
        "served_classifier_after": served, "library_model_after": model_name,
        "stderr_tail": proc.stderr[-500:] if proc.returncode else ""}, indent=1))


if __name__ == "__main__":
    main()
