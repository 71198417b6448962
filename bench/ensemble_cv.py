"""Two recipes' fold models side by side, and their average, on each held-out ESC-50 fold.

    python bench/ensemble_cv.py --a /tmp/cv2/fold{fold} --b /tmp/cvkd/fold{fold} --pooling whole \
        --out bench/results/cv-kd/ensemble.json

For fold K both models were trained without fold K, so their probability average is a fair two-model
ensemble for that fold (at twice the inference cost). Prints per-fold accuracy / mAP, the two models'
top-label agreement, and the means.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    from nels.encoders.cnn import CNNEncoder
    from nels.training.datasets import compute_features, load_dataset
    from nels.evaluate.classification import classification_metrics
    from nels.training.train import POOLINGS, predict_clips

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default=str(ROOT.parent / "shared" / "datasets" / "esc50"))
    ap.add_argument("--a", required=True, help="model folder of recipe A, {fold} = the held-out fold")
    ap.add_argument("--b", required=True, help="model folder of recipe B, {fold} = the held-out fold")
    ap.add_argument("--folds", type=int, nargs="*", default=[1, 2, 3, 4, 5])
    ap.add_argument("--pooling", default="whole", choices=POOLINGS)
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "nels" / "features"))
    ap.add_argument("--out", default=None, help="JSON file for the figures")
    a = ap.parse_args(argv)

    ds = load_dataset(a.dataset, "esc50")
    first = CNNEncoder.load(a.a.replace("{fold}", str(a.folds[0])))
    feats = compute_features(ds, first.feature_config, a.cache, progress=False, log=lambda m: None)
    res = {}
    for k in a.folds:
        idx = [i for i, it in enumerate(feats.items) if it.fold == k]
        y = np.array([feats.items[i].label for i in idx])
        mels = [feats.mels[i] for i in idx]
        pa = predict_clips(CNNEncoder.load(a.a.replace("{fold}", str(k))), mels, a.pooling)
        pb = predict_clips(CNNEncoder.load(a.b.replace("{fold}", str(k))), mels, a.pooling)
        res[k] = {name: {"accuracy": float((p.argmax(1) == y).mean()),
                         "mAP": round(float(classification_metrics(y, p, len(ds.labels))["mAP"]), 4)}
                  for name, p in (("a", pa), ("b", pb), ("average", (pa + pb) / 2))}
        res[k]["agreement"] = float((pa.argmax(1) == pb.argmax(1)).mean())
        print(f"fold {k}: " + ", ".join(f"{n} {res[k][n]['accuracy']:.4f} / {res[k][n]['mAP']:.3f}"
                                         for n in ("a", "b", "average")) + f"; agreement {res[k]['agreement']:.3f}",
              flush=True)
    mean = {n: {m: round(float(np.mean([res[k][n][m] for k in res])), 4) for m in ("accuracy", "mAP")}
            for n in ("a", "b", "average")}
    print("mean: " + ", ".join(f"{n} {mean[n]['accuracy']:.4f} / {mean[n]['mAP']:.3f}" for n in mean))
    if a.out:
        Path(a.out).write_text(json.dumps({"a": a.a, "b": a.b, "pooling": a.pooling, "folds": res, "mean": mean,
                                           "command": "python bench/ensemble_cv.py " + " ".join(sys.argv[1:])},
                                          indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
