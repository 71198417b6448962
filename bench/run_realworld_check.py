"""The second held-out check of `nels run`'s model versions (issue 16: "realworld-dev stays out of the pool: it is
only a second held-out check of the promoted models"): every version of every run library of a
bench/run_experiment.py experiment, measured on realworld-dev's clips of ESC-50 classes with the measure the
promotion gate uses on the loop's own held-out set (per-class AP of the version's classifier over the clips'
segment vectors, `nels.learn.run.heldout_ap`; realworld-dev never enters a pool, a seed or a choice).

    python3 bench/run_realworld_check.py --experiment ~/.cache/nels/run-experiment/seedhead-cold-margin0.25 \
        --out bench/results/run-experiment/seedhead-cold-margin0.25/realworld-check.json

Reported: per run, the seed version's and the final serving version's realworld-dev mAP (the change is what a
user of the promoted model gets on sounds from other sources); per candidate, its held-out change (what the gate
saw) against its realworld-dev change, and how often the gate's promotions and rejections agree with the sign of
the realworld-dev change.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def realworld_split(enc, dataset: Path, labels: list[str]):
    """The loop's Split of realworld-dev's clips whose esc50_class is one of `labels` (y = its index)."""
    from nels.audio.decode import decode
    from nels.learn import loop
    from nels.learn.embed import embed_files
    from nels.training.datasets import load_dataset

    items = [it for it in load_dataset(str(dataset), "realworld").items if it.esc50_class in labels]
    paths = [str(it.path) for it in items]
    X, clip = embed_files(enc, paths, lambda p: decode(p))
    return loop.Split(X, clip, np.array([labels.index(it.esc50_class) for it in items])), paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", required=True, help="a run_experiment (or run_head) folder of run libraries")
    ap.add_argument("--libraries", default="lib-*", help="which of its folders (a glob; default lib-*)")
    ap.add_argument("--dataset", default=str(ROOT.parent / "shared" / "datasets" / "realworld-dev"))
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from nels.encoders.base import create_encoder
    from nels.learn.run import encoder_clip_probs, heldout_ap, load_head, mean_ap
    from nels.store.library import Library

    t0 = time.time()
    splits: dict = {}
    runs = []
    for libdir in sorted(Path(args.experiment).expanduser().glob(args.libraries)):
        lib = Library(libdir, create=False)
        try:
            versions = lib.catalogue.model_versions()
            base = lib.get_meta("run.base_model") or versions[0]["path"]
        finally:
            lib.close()
        rows = []
        for v in versions:
            W, b, labels = load_head(v["path"])
            key = (base, tuple(labels))
            if key not in splits:  # every version of a run shares its backbone: the clips are embedded once
                splits[key] = realworld_split(create_encoder(base), Path(args.dataset), labels)
            split, paths = splits[key]
            n = len(paths)
            # a version without a linear head (a head's MLP seed): its encoder's probabilities, as the loop measures it
            probs = encoder_clip_probs(create_encoder(v["path"]), paths) if W is None else None
            per = heldout_ap((W, b, labels), split, labels, probs=probs)
            rows.append({"name": v["name"], "cycle": v["cycle"], "status": v["status"], "heldout_map": v["map"],
                         "realworld_map": mean_ap(per), "realworld_per_class": per, "clips": n})
        seed = next(r for r in rows if r["cycle"] == 0)
        final = next(r for r in rows if r["status"] == "serving")
        strategy = "clarity-semantic" if libdir.name.endswith("clarity-semantic") else "clarity"
        runs.append({"library": libdir.name, "strategy": strategy, "versions": rows,
                     "seed": {"heldout": seed["heldout_map"], "realworld": seed["realworld_map"]},
                     "serving": {"name": final["name"], "heldout": final["heldout_map"], "realworld": final["realworld_map"]}})
        print(f"{libdir.name}: seed held-out {seed['heldout_map']:.4f} realworld {seed['realworld_map']:.4f} -> serving "
              f"{final['heldout_map']:.4f} / {final['realworld_map']:.4f} ({time.time() - t0:.0f} s)", flush=True)

    summary = {}
    for strategy in sorted({r["strategy"] for r in runs}):
        rs = [r for r in runs if r["strategy"] == strategy]
        dh = np.array([r["serving"]["heldout"] - r["seed"]["heldout"] for r in rs]) * 100
        dr = np.array([r["serving"]["realworld"] - r["seed"]["realworld"] for r in rs]) * 100
        cands = [(v["heldout_map"] - r["seed"]["heldout"], v["realworld_map"] - r["seed"]["realworld"], v["status"])
                 for r in rs for v in r["versions"] if v["cycle"] > 0]
        promoted = [c for c in cands if c[2] in ("serving", "retired")]
        rejected = [c for c in cands if c[2] == "rejected"]
        summary[strategy] = {
            "runs": len(rs),
            "served change, held-out (points)": [round(float(dh.mean()), 2), round(float(dh.std()), 2)],
            "served change, realworld-dev (points)": [round(float(dr.mean()), 2), round(float(dr.std()), 2)],
            "promoted versions better than the seed on realworld-dev": f"{sum(c[1] > 0 for c in promoted)}/{len(promoted)}",
            "rejected versions worse than the seed on realworld-dev": f"{sum(c[1] < 0 for c in rejected)}/{len(rejected)}",
            "correlation of held-out and realworld-dev changes (all candidates)":
                round(float(np.corrcoef([c[0] for c in cands], [c[1] for c in cands])[0, 1]), 3) if len(cands) > 2 else None}
        print(strategy, json.dumps(summary[strategy]), flush=True)
    out = {"experiment": str(args.experiment), "dataset": str(args.dataset), "summary": summary, "runs": runs,
           "date": time.strftime("%Y-%m-%d"), "seconds": round(time.time() - t0, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
