"""`nels evaluate retrieval` end to end on a small labelled folder dataset (no ESC-50 needed): the
library is built through ingest, every query goes through search, and the figures are what they should be
for sounds that are trivially told apart by ear."""
from __future__ import annotations

import subprocess
import sys

from conftest import synth, write_wav

# ESC-50 class names (so the class-name and paraphrase query sets apply) on synthetic stand-ins
KINDS = {"rain": "noise", "siren": "chirp", "clock_tick": "clicks", "church_bells": "tone", "engine": "hum",
         "chirping_birds": "high"}


def test_evaluate_retrieval_on_a_folder_dataset(tmp_path):
    ds = tmp_path / "ds"
    for label, kind in KINDS.items():
        for seed in range(3):
            write_wav(ds / label / f"{label}-{seed}.wav", synth(kind, seconds=3.0, seed=seed))
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "nels.cli", "evaluate", "retrieval", "--dataset", str(ds),
                        "--format", "folders", "--out", str(out), "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    res = json.loads(r.stdout)
    assert res["clips"] == 18 and (out / "retrieval-fold1.json").exists()
    # query by example: 2 other clips of the same synthetic kind, nearly identical -> found first
    assert res["audio"]["acoustic"]["queries"] == 18
    assert res["audio"]["acoustic"]["mAP"] >= 0.9, res["audio"]
    for block in ("text_class_names", "text_paraphrases"):
        for mode, m in res[block].items():
            assert m["queries"] > 0 and 0.0 <= m["mAP"] <= 1.0, (block, mode, m)
    assert res["text_class_names"]["linguistic"]["queries"] == 6
