"""Head only, or the whole network? (issue 16: "re-train (head only, or the whole network): measured both").

For each run library of a bench/run_experiment.py experiment (CNN `seedhead` design), the clips the loop selected
in its last learning step (the iterations recorded for run-cN, pseudo-labels as the loop gave them) are used two
ways: the loop's own head-only candidate (that run's model version: the CNN's output layer re-trained on the seed
set + those clips), and the **whole CNN fine-tuned** from the run's seed model on the same clips (`nels train
--format folders --hparams '{"init": SEED_MODEL, ...}'`: every layer; a validation split of 10 % picks the epoch);
as a control, the whole CNN fine-tuned on the seed set alone (what the crawled clips add under whole-network
training). Every model is measured the same way: per-class AP of its clip probabilities (its encoder's segment
probabilities averaged per clip, as the loop measures) on the loop's held-out set (the other half of ESC-50 fold
1) and on realworld-dev's clips of ESC-50 classes (a second check, never a choice).

    nice -n 5 python3 bench/finetune_check.py --experiment ~/.cache/nels/run-experiment/seedhead-cold-margin0.25 \
        --cycle 5 --epochs 8 --lr 3e-4 --out bench/results/run-experiment/seedhead-cold-margin0.25/finetune-check.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def link_dataset(dest: Path, files: list[tuple[str, str]]) -> Path:
    """A folder-per-class dataset of symlinks: files = (path, class)."""
    for i, (path, label) in enumerate(files):
        d = dest / label
        d.mkdir(parents=True, exist_ok=True)
        link = d / f"{i:05d}-{Path(path).name}"
        if not link.exists():
            link.symlink_to(Path(path).resolve())
    return dest


def measure(model_dir: str, sets: dict, labels: list[str]) -> dict:
    """{set name: mAP} of a model folder on each (paths, y) set, as the loop measures a model without a head."""
    from nels.encoders.base import create_encoder
    from nels.learn import loop
    from nels.learn.run import encoder_clip_probs, heldout_ap, mean_ap

    enc = create_encoder(model_dir)
    out = {}
    for name, (paths, y) in sets.items():
        probs = encoder_clip_probs(enc, paths)
        split = loop.Split(np.zeros((0, 1), np.float32), np.zeros(0, np.int64), np.asarray(y))
        out[name] = mean_ap(heldout_ap((None, None, list(enc.labels)), split, labels, probs=probs))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", required=True)
    ap.add_argument("--libraries", default="lib-*")
    ap.add_argument("--cycle", type=int, default=5, help="the learning step whose selections are used")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--dataset", default=str(ROOT.parent / "shared" / "datasets" / "realworld-dev"))
    ap.add_argument("--work", default="/tmp/nels-finetune-check")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from nels.store.library import Library
    from nels.training.datasets import load_dataset
    from nels.training.train import train

    exp = Path(args.experiment).expanduser()
    work = Path(args.work)
    hp = {"lr": args.lr, "weight_decay": 1e-2, "pooling": "segments-mean-prob"}
    held = load_dataset(str(exp / "heldout"), "folders")
    rw = [it for it in load_dataset(args.dataset, "realworld").items if it.esc50_class]
    t0 = time.time()
    rows, seed_only = [], {}
    for libdir in sorted(exp.glob(args.libraries)):
        lib = Library(libdir, create=False)
        try:
            versions = {v["cycle"]: v for v in lib.catalogue.model_versions()}
            seed_v, cand = versions[0], versions[args.cycle]
            its = [r for r in lib.catalogue.iterations() if r["run"] == f"run-c{args.cycle}"]
            clips = lib.catalogue.clips(("id", "media_path"))
            labels = json.loads((Path(cand["path"]) / "model.json").read_text())["labels"]
            selected = {}
            for r in its:
                selected.update({int(k): int(v) for k, v in ((r["selected"] or {}).get("selected") or {}).items()})
            crawled = [(str(lib.media_file(clips[i][1])), labels[c]) for i, c in selected.items()]
        finally:
            lib.close()
        seed_dir = Path(json.loads((Path(seed_v["path"]) / "model.json").read_text())["seed_model"]["seed_set"])
        seed_ds = load_dataset(str(seed_dir), "folders")
        seed_files = [(str(it.path), seed_ds.labels[it.label]) for it in seed_ds.items]
        sets = {"heldout": ([str(it.path) for it in held.items], [labels.index(held.labels[it.label]) for it in held.items]),
                "realworld": ([str(it.path) for it in rw], [labels.index(it.esc50_class) for it in rw])}
        kw = dict(epochs=args.epochs, seed=0, quiet=True, progress=False, threads=1,
                  hparams={**hp, "init": seed_v["path"]})
        if seed_v["path"] not in seed_only:  # the control: the whole network on the seed set alone (per seed set)
            ds = link_dataset(work / seed_dir.name / "data", seed_files)
            s = train(str(ds), "folders", out=str(work / seed_dir.name / "model"), **kw)
            seed_only[seed_v["path"]] = {"model": s["model"], **measure(s["model"], sets, labels),
                                         "train_seconds": s["train_seconds"]}
        ds = link_dataset(work / libdir.name / "data", seed_files + crawled)
        s = train(str(ds), "folders", out=str(work / libdir.name / "model"), **kw)
        row = {"library": libdir.name, "selected": len(crawled), "seed_clips": len(seed_files),
               "seed": measure(seed_v["path"], sets, labels), "head_only": measure(cand["path"], sets, labels),
               "whole": measure(s["model"], sets, labels), "whole_seed_only": seed_only[seed_v["path"]],
               "whole_train_seconds": s["train_seconds"]}
        rows.append(row)
        print(f"{libdir.name}: " + "  ".join(f"{k} {row[k]['heldout']:.4f}/{row[k]['realworld']:.4f}"
                                             for k in ("seed", "head_only", "whole", "whole_seed_only"))
              + f"  ({time.time() - t0:.0f} s)", flush=True)
    summary = {}
    for strategy in ("clarity", "clarity-semantic"):
        rs = [r for r in rows if (r["library"].endswith("clarity-semantic")) == (strategy == "clarity-semantic")]
        if not rs:
            continue
        summary[strategy] = {
            f"{arm} - seed, {where} (points)": [round(float(np.mean(d)), 2), round(float(np.std(d)), 2)]
            for arm in ("head_only", "whole", "whole_seed_only") for where in ("heldout", "realworld")
            for d in [[(r[arm][where] - r["seed"][where]) * 100 for r in rs]]}
        print(strategy, json.dumps(summary[strategy]), flush=True)
    out = {"experiment": str(exp), "cycle": args.cycle, "hparams": {**hp, "epochs": args.epochs}, "summary": summary,
           "runs": rows, "date": time.strftime("%Y-%m-%d"), "seconds": round(time.time() - t0, 1)}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
