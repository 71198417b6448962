"""`nels run` on a library served by a head on YAMNet (issue 16: the loop on the pretrained backbone, not only on the
own CNN). The `seedhead` design of bench/run_experiment.py (same site, held-out half of fold 1, seed sets, runs and
figures: its functions are reused), with the served seed model a head trained by `nels train --backbone yamnet` on
the seed set (an MLP ensemble on YAMNet's window embeddings), instead of the shipped CNN's layers with an output
layer trained on it. Candidates are linear layers over the segment's mean YAMNet embedding (nels/learn/heads.py),
re-trained from scratch each learning step; the seed head is measured with its own segment probabilities.

    nice -n 10 python3 bench/run_head.py --seeds 0 --cycles 3 --per-cycle 50 --out bench/results/run-head

Needs ESC-50 (../shared/datasets/esc50) and the YAMNet weights. Writes out/runs/*.json, results.json and
summary.json (run_experiment's per-strategy figures: mAP changes in points, promoted/rejected, selection
precision, drift) and prints one JSON line per run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import run_experiment as rx  # noqa: E402  (sets up sys.path, NELS_MODEL and the BLAS threads first)


def seed_head(work: Path, seed_dir: Path, hparams: dict) -> Path:
    """A head on YAMNet trained on the seed set (`nels train --backbone yamnet --format folders`), once."""
    from nels.training.head import train_head

    d = work / f"yamnet-head-{seed_dir.name}"
    if not (d / "model.json").exists():
        train_head(str(seed_dir), "folders", None, str(d), "yamnet", seed=0, hparams=hparams, quiet=True,
                   progress=False, command=f"bench/run_head.py: nels train --backbone yamnet --dataset {seed_dir}"
                                           f" --format folders --hparams '{json.dumps(hparams)}'")
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--strategies", nargs="+", default=["clarity+semantic"])
    ap.add_argument("--cycles", type=int, default=3)
    ap.add_argument("--per-cycle", type=int, default=50, help="crawl results per cycle (all classes)")
    ap.add_argument("--per-query-max", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=1)
    ap.add_argument("--distractors", type=int, default=20)
    ap.add_argument("--margin", type=float, default=0.05)
    ap.add_argument("--seed-per-class", type=int, default=8)
    ap.add_argument("--hparams", default='{"views": []}', help="the seed head's (nels train --hparams)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "run-head"))
    ap.add_argument("--work", default=None, help="libraries (default: <NELS cache>/run-head/<out folder name>)")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)  # head training in this process: no thread spinning on busy cores
    if not (rx.ESC50 / "meta" / "esc50.csv").exists():
        sys.exit(f"ESC-50 not found at {rx.ESC50}")
    from nels import config
    from nels.encoders import installed

    if installed.find("yamnet") is None:
        sys.exit("needs the YAMNet weights (nels models fetch yamnet)")
    out = Path(a.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    work = Path(a.work or config.cache_dir() / "run-head" / out.name)
    work.mkdir(parents=True, exist_ok=True)
    held = rx.heldout_folder(work)
    cmd = "nice -n 10 python3 bench/run_head.py " + " ".join(sys.argv[1:])
    tag = "-yamnethead" + ("" if a.margin == 0.05 else f"-margin{a.margin}")  # libraries; seed heads are shared
    for seed in a.seeds:
        seed_dir = rx.seed_folder(work, a.seed_per_class, seed)
        t0, c0 = time.time(), time.process_time()
        model = seed_head(work, seed_dir, json.loads(a.hparams))
        train = {"wall_s": round(time.time() - t0, 1), "cpu_s": round(time.process_time() - c0, 1)}
        for strategy in a.strategies:
            f = out / "runs" / f"seed{seed}-{strategy.replace('+', '-')}.json"
            if f.exists():
                continue
            r = rx.one_run(seed, strategy, a.cycles, a.per_cycle, held, work, a.distractors, seed_dir, False, model,
                           a.iterations, a.per_query_max, tag, a.margin)
            r.update(design="seedhead", warm_start=False, margin=a.margin, seed_set=seed_dir.name,
                     seed_model="yamnet head (nels train --backbone yamnet)", seed_head_training=train)
            tmp = f.with_suffix(".tmp")
            tmp.write_text(json.dumps(r, indent=1) + "\n")
            os.replace(tmp, f)
            rows = rx.gather(out)
            (out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
            (out / "summary.json").write_text(json.dumps({"command": cmd, **rx.summary(rows)}, indent=1) + "\n")
            print(json.dumps({k: r[k] for k in ("seed", "strategy", "seed_model_map", "serving_map_after_cycle",
                                                "precision_per_cycle", "wall_s", "cpu_s")}), flush=True)


if __name__ == "__main__":
    main()
