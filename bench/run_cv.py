"""ESC-50 5-fold cross-validation of the CNN recipe: train with each fold held out, score that fold.

    python bench/run_cv.py --folds 2 3 --runs /tmp/cv --epochs 200 --arch JSON [--threads 1]
    python bench/run_cv.py --folds 1 --model-for 1=nels/data/models/esc50-cnn   # score an existing model
    python bench/run_cv.py --summary                                            # only rebuild summary.json
    python bench/run_cv.py --backbone yamnet --folds 1 2 3 4 5 --runs /tmp/cv-head --out bench/results/cv-head
                                                       # a head on YAMNet's window embeddings (nels train --backbone)

Each fold trains through the real CLI (`nels train ... --exclude-fold K`, resumable: re-running picks up
the checkpoint), then `nels evaluate classification --fold K --model ... --json` scores it (the model's
own clip pooling) and every pooling for comparison. Results: `--out`/foldK.json (the two commands, the
metrics, training minutes) and summary.json (mean over the folds present). Folds of one run can be
spread over several invocations (e.g. two folds at a time, one thread each, on a 2-core machine).
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POOLINGS = ("segments-mean-prob", "segments-mean-logit", "whole")
HEAD_POOLINGS = ("windows-mean-prob", "windows-mean-logit")


def nels(*args: str) -> list[str]:
    return [sys.executable, "-m", "nels.cli", *args]


def run_fold(fold: int, a, model_dir: Path | None) -> dict:
    train_cmd = None
    if model_dir is None:
        model_dir = Path(a.runs) / f"fold{fold}"
        args = ["train", "--dataset", a.dataset, "--format", "esc50", "--exclude-fold", str(fold),
                "--out", str(model_dir), "--epochs", str(a.epochs), "--seed", str(a.seed), "--cache", a.cache,
                "--threads", str(a.threads)]
        if a.backbone:
            args[1:1] = ["--backbone", a.backbone]
        if a.arch:
            args += ["--arch", a.arch]
        if a.hparams:  # "{fold}" stands for the held-out fold (e.g. a per-fold teacher path)
            args += ["--hparams", a.hparams.replace("{fold}", str(fold))]
        train_cmd = "nels " + " ".join(shlex.quote(x) for x in args)
        if not (model_dir / "model.json").exists():
            print(f"fold {fold}: {train_cmd}", file=sys.stderr, flush=True)
            subprocess.run(nels(*args), cwd=ROOT, check=True)
    meta = json.loads((model_dir / "model.json").read_text())
    train_cmd = train_cmd or meta.get("training", {}).get("command")
    ev = ["evaluate", "classification", "--dataset", a.dataset, "--fold", str(fold), "--model", str(model_dir),
          "--cache", a.cache]
    eval_cmd = "nels " + " ".join(shlex.quote(x) for x in ev + ["--json"])
    res = json.loads(subprocess.run(nels(*ev, "--json", "--out", str(Path(a.out) / f"fold{fold}-eval")), cwd=ROOT,
                                    check=True, capture_output=True, text=True).stdout)
    by_pool = {res.get("pooling"): {"accuracy": res["accuracy"], "mAP": res["mAP"]}}
    for p in poolings_of(meta):
        if p in by_pool:
            continue
        r = json.loads(subprocess.run(nels(*ev, "--pooling", p, "--json"), cwd=ROOT, check=True,
                                      capture_output=True, text=True).stdout)
        by_pool[p] = {"accuracy": r["accuracy"], "mAP": r["mAP"]}
    m = meta.get("metrics", {})
    return {"fold": fold, "train_command": train_cmd, "eval_command": eval_cmd, "model": str(model_dir),
            "arch": meta.get("arch"), "pooling": res.get("pooling"), "accuracy": res["accuracy"], "mAP": res["mAP"],
            "pooling_comparison": by_pool, "validation_accuracy": m.get("validation_accuracy"),
            "best_epoch": m.get("best_epoch"), "epochs_run": m.get("epochs_run"),
            "train_minutes": round(m.get("train_seconds", 0) / 60, 1), "per_class_ap": res.get("per_class_ap")}


def poolings_of(meta: dict) -> tuple:
    return HEAD_POOLINGS if meta.get("format") == "nels-head" else POOLINGS


def summary(out: Path) -> dict:
    folds = [json.loads(p.read_text()) for p in sorted(out.glob("fold[0-9].json"))]
    if not folds:
        return {}
    mean = lambda xs: round(sum(xs) / len(xs), 4)  # noqa: E731
    pools = [p for p in folds[0]["pooling_comparison"] if all(p in f["pooling_comparison"] for f in folds)]
    s = {"folds": [{k: f[k] for k in ("fold", "accuracy", "mAP", "train_minutes", "epochs_run", "train_command")}
                   for f in folds],
         "n_folds": len(folds), "mean_accuracy": mean([f["accuracy"] for f in folds]),
         "mean_mAP": mean([f["mAP"] for f in folds]),
         "mean_by_pooling": {p: mean([f["pooling_comparison"][p]["accuracy"] for f in folds]) for p in pools},
         "mean_mAP_by_pooling": {p: mean([f["pooling_comparison"][p]["mAP"] for f in folds]) for p in pools}}
    (out / "summary.json").write_text(json.dumps(s, indent=2) + "\n")
    return s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default=str(ROOT.parent / "shared" / "datasets" / "esc50"))
    ap.add_argument("--folds", type=int, nargs="*", default=[])
    ap.add_argument("--runs", default="/tmp/nels_cv", help="where the fold models are trained")
    ap.add_argument("--model-for", action="append", default=[], metavar="K=DIR", help="score DIR as fold K's model")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arch", default=None, help="JSON, as for nels train --arch")
    ap.add_argument("--backbone", default=None, help="train a head on this backbone (nels train --backbone), not the CNN")
    ap.add_argument("--hparams", default=None, help="JSON, as for nels train --hparams; {fold} is replaced by the fold")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "nels" / "features"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "cv"))
    ap.add_argument("--summary", action="store_true", help="only rebuild summary.json from the fold files")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    given = {int(k): Path(v) for k, v in (m.split("=", 1) for m in a.model_for)}
    if not a.summary:
        for fold in a.folds or sorted(given):
            r = run_fold(fold, a, given.get(fold))
            (out / f"fold{fold}.json").write_text(json.dumps(r, indent=2) + "\n")
            print(f"fold {fold}: accuracy {r['accuracy']:.4f}, mAP {r['mAP']:.4f} ({r['train_minutes']} min)", flush=True)
    s = summary(out)
    if s:
        print(f"{s['n_folds']} fold(s): mean accuracy {s['mean_accuracy']:.4f}, mean mAP {s['mean_mAP']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
