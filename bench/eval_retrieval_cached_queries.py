"""`nels evaluate retrieval` (ESC-50 fold) with each audio query encoded once per encoder instead of once per
search mode: the same figures (encoding is deterministic), a third of the query-encoding time. For slow,
shared machines. Prints the mAP table and writes the same JSON as `nels evaluate retrieval --out DIR`.

    python bench/eval_retrieval_cached_queries.py --dataset ../shared/datasets/esc50 --fold 1 \
        --model "HEAD+yamnet" --out DIR
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--fold", type=int, default=1)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True, help="work folder (the fold library is cached there) and JSON")
    args = ap.parse_args()

    from common import encode_queries_once
    from nels.evaluate.retrieval import evaluate_retrieval

    encode_queries_once()
    t = time.time()
    res = evaluate_retrieval(args.dataset, "esc50", args.fold, args.model, args.out)
    res["spec"] = args.model
    res["wall_seconds"] = round(time.time() - t, 1)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"retrieval-fold{args.fold}.json").write_text(json.dumps(res, indent=1))
    for name in ("text_class_names", "text_paraphrases", "text_paraphrases_independent", "audio"):
        print(f"{name:<28} " + "  ".join(f"{m} {r['mAP']:.3f}" for m, r in res.get(name, {}).items()), flush=True)


if __name__ == "__main__":
    main()
