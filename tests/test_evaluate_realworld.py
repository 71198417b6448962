"""The realworld dataset format (labels.csv: file,label,esc50_class,...) and `nels evaluate
retrieval|classification --format realworld` end to end, on a tiny realworld-style folder of synthetic sounds
made here (no ../shared needed): the protocols, their query sets and what they count."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import synth, write_wav
from nels.errors import DatasetError
from nels.training.datasets import load_dataset

# (label, esc50_class or "", synthetic kind, clips)
CLIPS = [("rain on a roof", "rain", "noise", 3), ("police siren", "siren", "chirp", 3),
         ("clock ticking", "clock_tick", "clicks", 3), ("kick drum", "", "hum", 3), ("whistle", "", "high", 2),
         ("organ note", "", "tone", 1)]


def make_realworld(root, clips=CLIPS, extra_rows=()):
    rows = []
    for label, esc, kind, count in clips:
        for i in range(count):
            name = f"audio/{label.replace(' ', '_')}_{i:02d}.wav"
            write_wav(root / name, synth(kind, seconds=2.5, seed=i))
            rows.append({"file": name, "label": label, "esc50_class": esc, "source_package": "synthetic",
                         "source_path": kind, "licence": "CC0"})
    rows.extend(extra_rows)
    with open(root / "labels.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["file", "label", "esc50_class", "source_package", "source_path", "licence"])
        w.writeheader()
        w.writerows(rows)
    return root


def test_realworld_format(tmp_path):
    root = make_realworld(tmp_path / "rw", extra_rows=[{"file": "audio/gone.wav", "label": "rain on a roof",
                                                       "esc50_class": "rain"}])
    ds = load_dataset(root, "realworld")
    assert ds.format == "realworld" and len(ds.items) == 15
    assert ds.labels == sorted(c[0] for c in CLIPS)
    assert [p for p, _ in ds.skipped] == [str(root / "audio/gone.wav")]
    assert {it.esc50_class for it in ds.items} == {"rain", "siren", "clock_tick", None}
    by_label = {ds.labels[it.label]: it.esc50_class for it in ds.items}
    assert by_label["rain on a roof"] == "rain" and by_label["kick drum"] is None
    assert all(it.fold is None for it in ds.items)


@pytest.mark.parametrize("content, message", [
    ("file,esc50_class\na.wav,rain\n", r"missing column\(s\) label"),
    ("file,label,esc50_class\na.wav,,rain\n", "empty label"),
    ("file,label,esc50_class\na.wav,rain,rainfall\n", "not an ESC-50 class name"),
    ("file,label\na.wav,x\na.wav,y\n", "listed twice"),
    ("file,label\n", "no rows"),
])
def test_realworld_format_errors_name_the_line(tmp_path, content, message):
    root = tmp_path / "bad"
    write_wav(root / "a.wav", synth("tone", seconds=1.0))
    (root / "labels.csv").write_text(content)
    with pytest.raises(DatasetError, match=message):
        load_dataset(root, "realworld")
    with pytest.raises(DatasetError, match="no labels.csv"):
        load_dataset(tmp_path, "realworld")


def _cli(*args):
    r = subprocess.run([sys.executable, "-m", "nels.cli", "evaluate", *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_evaluate_retrieval_and_classification_realworld(tmp_path):
    root = make_realworld(tmp_path / "rw")
    out = tmp_path / "out"
    res = json.loads(_cli("retrieval", "--dataset", str(root), "--format", "realworld", "--out", str(out), "--json"))
    assert (out / "retrieval-realworld.json").exists()
    assert res["clips"] == 15 and res["esc50_clips"] == 9 and res["esc50_classes"] == 3
    ling = "linguistic"
    assert res["text_esc50_names"][ling]["queries"] == 3  # one per ESC-50 class present
    assert res["text_other_labels"][ling]["queries"] == 3  # kick drum, whistle, organ note
    assert res["text_paraphrases"][ling]["queries"] > 3  # the committed paraphrases of rain, siren, clock_tick
    for block in ("text_esc50_names", "text_paraphrases", "text_other_labels", "audio"):
        for mode, m in res[block].items():
            assert 0.0 <= m["mAP"] <= 1.0 and 0.0 <= m["P@10"] <= 1.0, (block, mode, m)
    # every clip but the one "organ note" (no other clip of its label) queries by example; identical
    # synthetic kinds are found first
    assert res["audio"]["acoustic"]["queries"] == 14
    assert res["audio"]["acoustic"]["mAP"] >= 0.9, res["audio"]
    text = _cli("retrieval", "--dataset", str(root), "--format", "realworld", "--out", str(out))
    assert "text_other_labels" in text and "audio" in text

    cls = json.loads(_cli("classification", "--dataset", str(root), "--format", "realworld", "--json"))
    assert cls["n_clips"] == 9 and cls["classes"] == 3 and cls["how"] == "argmax"
    assert 0.0 <= cls["accuracy"] <= 1.0
    assert sum(v["clips"] for v in cls["per_class"].values()) == 9


def test_zero_shot_classification_for_an_audioset_model():
    """A model whose labels are AudioSet classes answers ESC-50 top-1 through label similarity."""
    from nels.evaluate.realworld import esc50_class_scores

    class AudioSetModel:
        labels = ["Rain", "Siren", "Tick-tock", "Bark", "Speech"]

    classes = ["rain", "siren", "clock_tick", "dog", "sea_waves"]
    probs = np.eye(5, dtype=np.float32)[[0, 1, 2, 3]] * 0.9
    scores, how = esc50_class_scores(AudioSetModel(), probs, classes)
    assert how == "zero-shot label similarity" and scores.shape == (4, 5)
    assert scores.argmax(axis=1).tolist() == [0, 1, 2, 3]
