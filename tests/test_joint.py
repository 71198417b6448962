"""The joint space on a tiny synthetic world: 4 sound classes, a CNN trained in seconds, twin towers."""
import json
from pathlib import Path

import pytest

from test_cnn import train_tiny

VOCAB = {"classes": {
    "low_tone": {"name": "low tone", "description": "a steady deep hum", "synonyms": ["bass drone", "low hum"]},
    "high_tone": {"name": "high tone", "description": "a steady piercing whistle", "synonyms": ["high beep", "whistle"]},
    "noise_burst": {"name": "noise burst", "description": "short bursts of hiss", "synonyms": ["static bursts", "hiss"]},
    "chirp": {"name": "chirp", "description": "a rising sweep repeating", "synonyms": ["sweep", "rising whoop"]},
}}


PHRASES = {
    "low_tone": ["deep droning sound", "rumbling bass note", "subwoofer hum", "mains hum"],
    "high_tone": ["shrill whine", "piercing beep", "high pitched squeal", "tinnitus ring"],
    "noise_burst": ["bursts of static", "short hisses", "white noise pulses", "crackling radio bursts"],
    "chirp": ["upward sweep", "rising glide", "slide whistle up", "zooming upward tone"],
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("joint")
    ds, model = train_tiny(root)
    vocab = root / "vocab.json"
    vocab.write_text(json.dumps(VOCAB))
    return root, ds, model, vocab


@pytest.fixture(scope="module")
def joint_world(world):
    """The joint space trained for `world`'s CNN (stored in the model folder) and a library of `world`'s
    dataset ingested with that model, so it holds joint vectors. Returns (train_joint's report, library dir)."""
    from nels.library import Library
    from nels.ingest.runner import IngestOptions, ingest
    from nels.training.joint import train_joint

    root, ds, cnn, vocab = world
    phrases = root / "phrases.json"
    phrases.write_text(json.dumps({"classes": PHRASES}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("nels.training.joint.CACHE", root / "jcache")
        res = train_joint(str(ds), "folders", model=str(cnn), loss="both", epochs=15, vocabulary=str(vocab),
                          progress=False, phrases=str(phrases))
    lib_dir = root / "lib"
    with Library(lib_dir) as lib:
        ingest(lib, [str(ds)], model=str(cnn), options=IngestOptions(progress=False))
        lib.save_indexes()
    return res, lib_dir


def test_train_joint_and_search_text_and_audio(world, joint_world):
    from nels.library import Library
    from nels.encoders import joint
    from nels.encoders.base import load_encoder

    root, ds, cnn, vocab = world
    res, lib_dir = joint_world
    assert set(res["losses"]) == {"contrastive/mlp", "contrastive/linear", "infonce/mlp", "infonce/linear"}
    assert res["losses"][f"{res['loss']}/{res['text_tower']}"]["validation"] >= 0.75
    # training text: vocabulary phrases + 3 of the 4 extra phrasings per class; the rest validate
    assert res["training_text"]["extra_phrases"] == 12 and res["training_text"]["held_out_phrases"] == 4
    assert (cnn / "joint" / "training_phrases.json").exists()
    fusion = res["fusion"]["text"]
    assert fusion["default_mode"] in ("linguistic", "joint", "fused") and fusion["weights"]["joint"] > 0
    assert fusion[fusion["default_mode"]] == max(fusion["linguistic"], fusion["joint"], fusion["fused"])
    enc = joint.joint_encoder_for(load_encoder(str(cnn)))
    assert enc is not None and (cnn / "joint" / "joint.json").exists()
    # ingest built the joint index alongside the acoustic one
    lib = Library(lib_dir, create=False)
    assert len(lib.store("cnn")) > 0
    assert lib.catalogue.has_space("joint") and len(lib.store("joint")) == len(lib.store("cnn"))
    hits = lib.search(text="bass drone", mode="joint", k=5)
    labels = [Path(h["source"]).parent.name for h in hits]
    assert labels.count("low_tone") >= 4, labels
    hits = lib.search(audio=next((ds / "chirp").iterdir()), mode="joint", k=5)
    assert [Path(h["source"]).parent.name for h in hits].count("chirp") >= 4


def test_text_queries_default_to_the_mode_validation_chose(world, joint_world):
    from nels.library import Library
    from nels.encoders import joint
    from nels.encoders.base import load_encoder

    root, ds, cnn, vocab = world
    lib = Library(joint_world[1], create=False)
    chosen = joint.joint_encoder_for(load_encoder(str(cnn))).meta["fusion"]["text"]["default_mode"]
    res = lib.search(text="a deep drone", k=3)
    assert res.mode == chosen
    assert Path(res[0]["source"]).parent.name == "low_tone"
    fused = lib.search(text="a deep drone", k=3, mode="fused")
    assert set(fused[0]["scores"]) == {"linguistic", "joint"}


def test_bad_training_phrases_file_is_refused(world, tmp_path):
    from nels.errors import NelsError
    from nels.training.joint import train_joint

    root, ds, cnn, vocab = world
    bad = tmp_path / "p.json"
    bad.write_text(json.dumps({"low_tone": ["hum"]}))  # no "classes" object
    with pytest.raises(NelsError, match="classes"):
        train_joint(str(ds), "folders", model=str(cnn), epochs=1, vocabulary=str(vocab), progress=False,
                    phrases=str(bad), out=str(tmp_path / "j"))
    with pytest.raises(NelsError, match="not found"):
        train_joint(str(ds), "folders", model=str(cnn), epochs=1, vocabulary=str(vocab), progress=False,
                    phrases=str(tmp_path / "missing.json"), out=str(tmp_path / "j"))


def test_vocabulary_missing_a_class_is_refused(world, tmp_path):
    from nels.errors import NelsError
    from nels.training.joint import train_joint

    root, ds, cnn, vocab = world
    partial = {"classes": {k: v for k, v in VOCAB["classes"].items() if k != "chirp"}}
    bad = tmp_path / "v.json"
    bad.write_text(json.dumps(partial))
    with pytest.raises(NelsError, match="chirp"):
        train_joint(str(ds), "folders", model=str(cnn), epochs=1, vocabulary=str(bad), progress=False)


def test_joint_search_without_joint_vectors_names_the_command(tmp_path, sounds):
    from nels.errors import QueryError
    from nels.library import Library
    from nels.ingest.runner import IngestOptions, ingest

    lib = Library(tmp_path / "lib")
    ingest(lib, [str(sounds)], model="baseline", options=IngestOptions(progress=False))
    with pytest.raises(QueryError, match="nels train-joint"):
        lib.search(text="a hum", mode="joint")


def test_joint_results_carry_tags_and_related_words(world, joint_world):
    from nels.library import Library

    root, ds, cnn, vocab = world
    lib = Library(joint_world[1], create=False)
    res = lib.search(audio=next((ds / "high_tone").iterdir()), k=3)
    assert res.mode == "fused" and res.suggested_tags
    assert res.suggested_tags[0]["label"] == "high_tone"
    res = lib.search(text="whistle", k=3)
    assert res.related_words and {w["label"] for w in res.related_words[:2]} == {"high_tone"}
    # only words of the classes the query names: the joint space put any words near some class ("guitar" near
    # "tin can" in the ESC-50 one), and a query no class covers gets none
    assert {w["label"] for w in res.related_words} == {"high_tone"}, res.related_words
    res = lib.search(text="an electric guitar solo", k=3)
    assert res.coverage and not res.coverage["covered"] and res.related_words == [], (res.coverage, res.related_words)


def test_relevance_shown_falls_with_the_rank(world, joint_world):
    """The default fused mode ranks by reciprocal rank over the linguistic mode and the joint space, while the
    relevance model reads the class probabilities only: the number shown is made non-increasing in rank (pool
    adjacent violators), so a person never sees 0.27 above 0.43."""
    from nels.library import Library
    from nels.search.calibration import non_increasing

    assert non_increasing([0.35, 0.27, 0.43, 0.1]).tolist() == pytest.approx([0.35, 0.35, 0.35, 0.1])
    assert non_increasing([0.9, 0.5, 0.5, 0.2]).tolist() == [0.9, 0.5, 0.5, 0.2] and non_increasing([]).size == 0
    lib = Library(joint_world[1], create=False)
    for text in ("whistle", "a deep hum", "rising sweep", "bursts of hiss"):
        res = lib.search(text=text, k=20)
        rel = [r["relevance"] for r in res]
        assert res.mode == "fused" and len(rel) > 5 and None not in rel
        assert all(a >= b for a, b in zip(rel, rel[1:])), (text, rel)


def test_class_without_audio_is_refused(world, tmp_path):
    import shutil

    from nels.errors import NelsError
    from nels.training.joint import train_joint

    root, ds, cnn, vocab = world
    copy = tmp_path / "ds"
    shutil.copytree(ds, copy)
    for f in (copy / "chirp").iterdir():
        f.unlink()
    with pytest.raises(NelsError, match="chirp"):
        train_joint(str(copy), "folders", model=str(cnn), epochs=1, vocabulary=str(vocab), progress=False,
                    out=str(tmp_path / "j"))
