"""The joint space on a backbone's embeddings: a head on YAMNet (`nels train --backbone yamnet --hparams
'{"joint": ...}'`) trains its twin towers on the head's segment vectors (YAMNet's 1024-d embedding) into
<head>/joint, a library indexed with the head holds joint vectors, and text and audio search through them find
the right sounds. A library has one joint space, its primary encoder's.

Needs the YAMNet weights (installed, or ../shared/models/yamnet) and ai-edge-litert; skips cleanly without."""
from __future__ import annotations

import json

import pytest

from conftest import SR, synth, write_wav
from test_backbone_head import CLASSES, FAST, make_dataset, needs_yamnet

VOCAB = {"classes": {
    "clicks": {"name": "clicks", "description": "a fast train of sharp ticks", "synonyms": ["ticking", "tapping"]},
    "noise": {"name": "noise", "description": "a steady broadband hiss", "synonyms": ["static", "hiss"]},
    "tone": {"name": "tone", "description": "a steady musical note with harmonics", "synonyms": ["beep", "hum"]},
}}
PHRASES = {
    "clicks": ["rapid ticking", "a metronome gone mad", "clicking pulses", "tick tick tick"],
    "noise": ["white noise", "radio static hiss", "shhhh sound", "detuned television"],
    "tone": ["sine wave note", "a pure beep", "musical pitch held", "a steady whistle note"],
}


@pytest.fixture(scope="module")
def head_with_joint(tmp_path_factory):
    """(dataset folder, head folder, train_head's summary): a head trained with its joint space."""
    needs_yamnet()
    from nels.training.head import train_head

    base = tmp_path_factory.mktemp("jointhead")
    ds = make_dataset(base / "ds")
    (base / "vocab.json").write_text(json.dumps(VOCAB))
    (base / "phrases.json").write_text(json.dumps({"classes": PHRASES}))
    joint = {"epochs": 15, "vocabulary": str(base / "vocab.json"), "phrases": str(base / "phrases.json")}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("nels.training.joint.CACHE", base / "jcache")
        summary = train_head(str(ds), "folders", None, str(base / "head"), "yamnet", seed=0, cache=str(base / "cache"),
                             hparams={**FAST, "joint": joint}, quiet=True, progress=False)
    return ds, base / "head", summary


def test_a_head_trains_its_joint_space_on_the_backbone_vectors(head_with_joint):
    from nels.encoders.base import create_encoder
    from nels.encoders.joint import JointEncoder, joint_encoder_for

    _, head, summary = head_with_joint
    meta = json.loads((head / "joint" / "joint.json").read_text())
    enc = create_encoder(str(head))
    assert meta["audio_model"] == enc.name and meta["audio_space"] == "head-yamnet" and meta["audio_dim"] == 1024
    assert meta["audio_model_sha256"] == enc.meta["weights_sha256"]
    assert summary["joint"]["out"] == str(head / "joint") and meta["epochs"] == 15
    # validation: the head's own validation clips (one per class here), wordings the towers never saw
    assert meta["validation_clips"] == 3 and meta["training_text"]["held_out_phrases"] == 3
    assert meta["losses"][f"{meta['loss']}/{meta['text_tower']}"]["validation"] >= 0.75
    j = joint_encoder_for(enc)
    assert isinstance(j, JointEncoder) and j.dim == 128
    assert "joint space written to" in (head / "training.log").read_text()


def test_a_library_on_the_head_searches_through_its_joint_space(head_with_joint, tmp_path):
    from nels.ingest.runner import IngestOptions, ingest
    from nels.library import Library

    _, head, _ = head_with_joint
    d = tmp_path / "in"
    for i, c in enumerate(CLASSES * 2):  # clips the head and the towers never saw
        write_wav(d / f"{c}-{i}.wav", synth(c, seconds=3.0, seed=200 + i))
    with Library(tmp_path / "lib") as lib:
        rep = ingest(lib, [str(d)], model=str(head), options=IngestOptions(progress=False))
        assert len(rep.added) == 6 and not rep.failed
        assert sorted(lib.spaces()) == ["head-yamnet", "joint"]
        assert len(lib.store("joint")) == len(lib.store("head-yamnet")) > 0
        res = lib.search(text="radio static hiss", k=2, mode="joint")
        assert [r["title"].split("-")[0] for r in res] == ["noise", "noise"], [r["title"] for r in res]
        res = lib.search(audio=synth("clicks", seconds=3.0, seed=7), k=2, mode="joint")
        assert [r["title"].split("-")[0] for r in res] == ["clicks", "clicks"], [r["title"] for r in res]
        res = lib.search(text="a steady hiss", k=2, mode="fused")
        assert res and set(res[0]["scores"]) <= {"linguistic", "joint"}
        assert [r["title"].split("-")[0] for r in res] == ["noise", "noise"], [r["title"] for r in res]


def test_a_library_indexes_only_its_primary_encoders_joint_space(head_with_joint):
    """The head and the own CNN both carry a joint space; both write the space "joint", and search maps queries
    through the primary's towers, so only the primary's is indexed."""
    from nels.encoders.base import create_encoder
    from nels.encoders.selection import encoders_for

    _, head, _ = head_with_joint
    head_name, cnn_name = create_encoder(str(head)).name, create_encoder("default").name
    for spec, primary in ((f"{head}+default", head_name), (f"default+{head}", cnn_name)):
        joints = [e for e in encoders_for(spec) if hasattr(e, "encode_from")]
        assert [j.audio_model for j in joints] == [primary], spec


def test_a_bad_joint_option_is_refused_before_training(tmp_path):
    from nels.errors import DatasetError
    from nels.training.head import train_head

    for bad in ("yes", {"epochs": 5, "lr": 0.1}):
        with pytest.raises(DatasetError, match="joint must be true, false or an object"):
            train_head(str(tmp_path / "nowhere"), "folders", None, str(tmp_path / "head"), "yamnet",
                       hparams={"joint": bad}, quiet=True, progress=False)
    assert not (tmp_path / "head").exists()


def test_segment_vectors_pooled_from_cached_windows_are_the_heads_own(head_with_joint, tmp_path, capsys):
    """The joint space trains on the head's segment vectors rebuilt from the backbone windows its training cached:
    they are the vectors the head gives at ingest (the backbone's one grid of windows per clip)."""
    import numpy as np

    from nels.audio.decode import decode
    from nels.encoders.base import create_encoder
    from nels.training.datasets import load_dataset
    from nels.training.windows import window_embeddings
    from nels.training.joint import head_segment_embeddings

    ds_dir, head, _ = head_with_joint
    ds = load_dataset(str(ds_dir), "folders")
    enc = create_encoder(str(head))
    W = window_embeddings(ds, enc.backbone, tmp_path / "windows", (0.0, 0.0), log=lambda m: None)
    keep = list(range(len(ds.items)))
    emb, clip, label, probs = head_segment_embeddings(ds, enc, keep, [0], cache_dir=tmp_path / "j", windows=W)
    assert f"{len(keep) - 1} clips from the cached backbone windows, 1 encoded" in capsys.readouterr().err
    assert sorted(set(clip.tolist())) == keep and emb.shape[1] == 1024
    for ci in keep:
        r = enc.encode(decode(ds.items[ci].path, sr=SR), SR)
        assert np.allclose(emb[clip == ci], r.embeddings, atol=1e-5), ds.items[ci].path
        assert (label[clip == ci] == ds.items[ci].label).all()
    assert np.allclose(probs[clip == 0].sum(1), 1, atol=1e-4)  # a validation clip's probabilities are the head's
