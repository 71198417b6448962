"""Text search before/after the coverage-weighted fusion (calibration.json's coverage_gamma removed, then restored),
in one process on one library (audio search is unchanged by it): linguistic and fused modes.

    python3 bench/eval_text_before_after.py fold1 EVAL_DIR OUT.json [MODEL]       # ESC-50 fold 1
    python3 bench/eval_text_before_after.py realworld EVAL_DIR OUT.json [MODEL]   # ../shared/datasets/realworld-dev
EVAL_DIR: the --out folder of `nels evaluate retrieval` (its library is reused); MODEL default default+yamnet.
"""
import json
import sys
import time

from common import ROOT, esc50
from nels.search import coverage as cov
from nels.evaluate.retrieval import evaluate_retrieval
from nels.evaluate.realworld import evaluate_retrieval_realworld
which, workdir, out = sys.argv[1], sys.argv[2], sys.argv[3]
model = sys.argv[4] if len(sys.argv) > 4 else "default+yamnet"
rel = cov.calibration()["relevance"]
gamma = rel.get("coverage_gamma")
assert gamma is not None, "no coverage_gamma in calibration.json"
res = {}
for name, g in (("before", None), ("after", gamma)):
    if g is None: rel.pop("coverage_gamma", None)
    else: rel["coverage_gamma"] = g
    t = time.time()
    if which == "fold1":
        r = evaluate_retrieval(str(esc50()), "esc50", 1, model, workdir, modes_text=["linguistic", "fused"], modes_audio=[])
    else:
        r = evaluate_retrieval_realworld(str(ROOT.parent / "shared" / "datasets" / "realworld-dev"), model, workdir, modes_text=["linguistic", "fused"], modes_audio=[])
    res[name] = r
    print(name, f"{time.time()-t:.0f}s", {k: {m: v["mAP"] for m, v in r[k].items()} for k in r if k.startswith("text") and isinstance(r[k], dict)}, flush=True)
res["gamma"] = gamma
json.dump(res, open(out, "w"), indent=1)
