"""Audio search before/after the audio fusion chosen by bench/fit_audio_fusion.py (its entries removed from
calibration.json's relevance section, then restored), in one process on one library, each query sound encoded
once: the acoustic, joint and fused modes.

    python3 bench/eval_audio_before_after.py fold1 EVAL_DIR OUT.json [MODEL]       # ESC-50 fold 1
    python3 bench/eval_audio_before_after.py realworld EVAL_DIR OUT.json [MODEL]   # ../shared/datasets/realworld-dev
EVAL_DIR: the --out folder of `nels evaluate retrieval` (its library is reused); MODEL default default+yamnet.
"""
import json
import sys
import time

from common import ROOT, encode_queries_once, esc50
from nels.evaluate.realworld import evaluate_retrieval_realworld
from nels.evaluate.retrieval import evaluate_retrieval
from nels.search import coverage as cov

ENTRIES = ("audio_fusion",)  # the relevance-section keys bench/fit_audio_fusion.py --write adds

which, workdir, out = sys.argv[1], sys.argv[2], sys.argv[3]
model = sys.argv[4] if len(sys.argv) > 4 else "default+yamnet"
rel = cov.calibration()["relevance"]
saved = {k: rel[k] for k in ENTRIES if k in rel}
assert saved, f"none of {ENTRIES} in calibration.json: nothing to compare"

encode_queries_once()
res = {}
for name in ("before", "after"):
    for k in ENTRIES:
        rel.pop(k, None)
    if name == "after":
        rel.update(saved)
    t = time.time()
    if which == "fold1":
        r = evaluate_retrieval(str(esc50()), "esc50", 1, model, workdir, modes_text=[], modes_audio=["acoustic", "joint", "fused"])
    else:
        r = evaluate_retrieval_realworld(str(ROOT.parent / "shared" / "datasets" / "realworld-dev"), model, workdir,
                                         modes_text=[], modes_audio=["acoustic", "joint", "fused"])
    res[name] = r
    print(name, f"{time.time() - t:.0f}s", {m: v["mAP"] for m, v in r["audio"].items()}, flush=True)
res["entries"] = saved
json.dump(res, open(out, "w"), indent=1)
