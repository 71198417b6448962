"""Adding a class should not cost the other 50 (issue 18, section 5): `nels train --add` puts new classes beside
the library's model; every old class, the vectors and the joint space keep working."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import SR, synth, write_wav


def beep(seconds: float, freq: float, seed: int) -> np.ndarray:
    """Pulses of a pure tone (0.15 s on, 0.15 s off): a 'beep' no ESC-50 class describes."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    on = (np.floor(t / 0.15) % 2 == 0).astype(np.float32)
    x = np.sin(2 * np.pi * freq * t) * on + 0.01 * rng.standard_normal(t.size)
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from nels.ingest.runner import IngestOptions, ingest
    from nels.library import Library

    root = tmp_path_factory.mktemp("add")
    for kind in ["tone", "high", "noise", "clicks", "chirp", "hum"]:
        for seed in range(3):
            write_wav(root / "in" / f"{kind}-{seed}.wav", synth(kind, 4.0, seed=seed))
    for i in range(8):
        write_wav(root / "beeps" / "beep" / f"b{i}.wav", beep(3.0, 1800 + 60 * i, seed=i))
    lib_dir = root / "lib"
    with Library(lib_dir) as lib:
        rep = ingest(lib, [str(root / "in")], model="default", options=IngestOptions(progress=False))
        assert len(rep.added) == 18
    return root, lib_dir


def test_train_add_keeps_every_old_class_and_the_joint_space(setup, monkeypatch):
    from nels.cli import main
    from nels.ingest import reindex as reindex_mod
    from nels.ingest.reindex import plan_reindex
    from nels.ingest.runner import IngestOptions, ingest
    from nels.library import Library

    root, lib_dir = setup
    with Library(lib_dir) as lib:
        assert "joint" in lib.spaces()
        before = {q: [(r["clip_id"], r["start"]) for r in lib.search(text=q, mode=m, k=8)]
                  for q, m in (("dog", "linguistic"), ("church bells", "linguistic"), ("dog barking", "joint"))}
        old_classes = set(lib.catalogue.model_labels(lib.catalogue.prob_models()[0]))

    def no_decode(*a, **k):
        raise AssertionError("applying added classes decoded audio again")

    monkeypatch.setattr(reindex_mod, "encode_file", no_decode)  # the stored vectors are enough
    assert main(["--library", str(lib_dir), "train", "--add", "--dataset", str(root / "beeps"), "--apply"]) == 0
    monkeypatch.undo()
    with Library(lib_dir) as lib:
        assert {"cnn", "joint"} <= set(lib.spaces())  # the joint space is still there
        classes = set(lib.catalogue.model_labels(lib.catalogue.prob_models()[0]))
        assert classes == old_classes | {"beep"} and len(classes) == len(old_classes) + 1
        # an old class ranks exactly as before: its probabilities are the base model's, untouched
        after = {q: [(r["clip_id"], r["start"]) for r in lib.search(text=q, mode=m, k=8)]
                 for q, m in (("dog", "linguistic"), ("church bells", "linguistic"), ("dog barking", "joint"))}
        assert after == before
        # nothing became a beep: no clip of the library has beep as its top label
        tops = {s["labels"][0]["label"] for cid in range(1, 19) for s in lib.clip(cid)["segments"] if s["labels"]}
        assert "beep" not in tops, tops
        assert not plan_reindex(lib, None).clips  # the library is fully on the new model
        # what the stored vectors gave is what encoding the audio with the new model gives
        from nels.audio.decode import decode
        from nels.encoders.registry import create_encoder

        enc = create_encoder(lib.get_meta("model"))
        ids, mat, labels, _ = lib.prob_matrix(enc.name)
        assert labels == enc.labels
        sids = lib.catalogue.segment_ids(1)
        stored = mat[[ids.tolist().index(s) for s in sids]]
        fresh = enc.encode(decode(lib.path / lib.catalogue.clip_media(1)["media_path"]), SR).probs
        assert stored.shape == fresh.shape and np.allclose(stored, fresh, atol=1e-4)
        # a beep the training never saw is found by its new name
        write_wav(root / "new" / "fresh-beep.wav", beep(4.0, 2050, seed=99))
        rep = ingest(lib, [str(root / "new")], options=IngestOptions(progress=False))
        res = lib.search(text="beep", mode="linguistic", k=3)
        assert res and res[0]["clip_id"] == rep.added[0], [(r["title"], r["explanation"]) for r in res]


def test_add_refuses_a_class_the_model_has_and_an_empty_library(setup, tmp_path):
    from nels.errors import DatasetError
    from nels.library import Library
    from nels.training.addon import train_addon

    root, lib_dir = setup
    write_wav(tmp_path / "ds" / "dog" / "a.wav", beep(3.0, 500, seed=1))
    with pytest.raises(DatasetError, match="already has the class"):
        train_addon(lib_dir, tmp_path / "ds")
    Library(tmp_path / "empty").close()
    with pytest.raises(DatasetError, match="empty"):
        train_addon(tmp_path / "empty", root / "beeps")


def test_an_addon_refuses_another_base(setup, tmp_path):
    import json

    from nels.encoders.registry import create_encoder
    from nels.errors import ModelError
    from nels.training.addon import train_addon

    root, lib_dir = setup  # (whether or not another test has added "beep" to this library)
    for i in range(3):
        write_wav(tmp_path / "ds" / "whistle" / f"w{i}.wav", beep(3.0, 3500 + 100 * i, seed=i))
    out = train_addon(lib_dir, tmp_path / "ds", out=tmp_path / "added")
    enc = create_encoder(out["model"])
    assert enc.labels[-1] == "whistle" and enc.labels[:50] == create_encoder("default").labels
    meta = json.loads((tmp_path / "added" / "model.json").read_text())
    meta["base_name"] = "some-other-model"
    (tmp_path / "added" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="train them again"):
        create_encoder(str(tmp_path / "added"))


def test_on_a_library_with_a_backbone_the_classes_go_on_the_backbone(tmp_path):
    """default+yamnet: the new class is trained on YAMNet's vectors (the backbone), the CNN part is untouched."""
    from pathlib import Path

    weights = Path(__file__).resolve().parents[2] / "shared" / "models" / "yamnet" / "yamnet_classification.tflite"
    if not weights.is_file():
        pytest.skip("needs the YAMNet weights in ../shared/models/yamnet")
    pytest.importorskip("ai_edge_litert")
    from nels.encoders.selection import split_spec
    from nels.ingest.runner import IngestOptions, ingest
    from nels.library import Library
    from nels.training.addon import train_addon

    for kind in ["tone", "noise", "clicks", "chirp", "hum"]:
        for seed in range(2):
            write_wav(tmp_path / "in" / f"{kind}-{seed}.wav", synth(kind, 4.0, seed=seed))
    for i in range(4):
        write_wav(tmp_path / "beeps" / "beep" / f"b{i}.wav", beep(3.0, 1800 + 60 * i, seed=i))
    with Library(tmp_path / "lib") as lib:
        ingest(lib, [str(tmp_path / "in")], model="default+yamnet", options=IngestOptions(progress=False))
    out = train_addon(tmp_path / "lib", tmp_path / "beeps")
    parts = split_spec(out["spec"])
    assert parts[0] == "default" and parts[1] == str(Path(out["model"]).resolve())
    assert out["base"].startswith("yamnet") and out["base_classes"] == 521
