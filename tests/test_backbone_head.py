"""Your own classes on a pretrained backbone (`nels train --backbone yamnet`): a head trained in seconds on a tiny
synthetic folder dataset loads through the Encoder seam (a head folder, or head:PATH), and ingest, text search,
tag and `nels evaluate classification` work with it; bad input says what is wrong.

Needs the YAMNet weights (installed, or ../shared/models/yamnet) and ai-edge-litert; skips cleanly without."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import SR, synth, write_wav

CLASSES = ("clicks", "noise", "tone")
FAST = {"epochs": 12, "patience": 12, "hidden": [32], "batch_size": 32, "members": 2, "views": []}


def needs_yamnet():
    pytest.importorskip("ai_edge_litert")
    from nels.encoders import installed

    if installed.find("yamnet") is None:
        pytest.skip("needs the YAMNet weights (nels models fetch yamnet, or ../shared/models/yamnet)")


def make_dataset(root: Path, per_class: int = 6) -> Path:
    for c in CLASSES:
        for i in range(per_class):
            write_wav(root / c / f"{c}-{i}.wav", synth(c, seconds=2.0 + 0.25 * i, seed=10 * i + len(c)))
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(dataset folder, head folder, cache folder, summary): trained once for the module."""
    needs_yamnet()
    from nels.training.head import train_head

    base = tmp_path_factory.mktemp("head")
    ds = make_dataset(base / "ds")
    cache = base / "cache"
    summary = train_head(str(ds), "folders", None, str(base / "head"), "yamnet", seed=0, cache=str(cache),
                         hparams=FAST, quiet=True, progress=False)
    return ds, base / "head", cache, summary


def test_train_writes_a_head_folder(trained):
    ds, head, cache, summary = trained
    meta = json.loads((head / "model.json").read_text())
    assert meta["format"] == "nels-head" and meta["backbone"] == "yamnet" and meta["labels"] == list(CLASSES)
    assert meta["pooling"] in ("windows-mean-prob", "windows-mean-logit") and meta["members"] == 2
    assert meta["layers"] == [[1024, 32], [32, 3]]
    assert "nels train --backbone yamnet" in meta["training"]["command"] and "--format folders" in meta["training"]["command"]
    assert "user-supplied dataset" in meta["licence"] and meta["backbone_licence"] == "Apache-2.0"
    assert meta["metrics"]["validation_clips"] == 3 and meta["metrics"]["train_clips"] == 15
    card = (head / "MODEL_CARD.md").read_text()
    assert "## Made by" in card and "## Licence" in card and "yamnet" in card
    assert list(cache.glob("ds-folders-yamnet-*.npz")), "the window embeddings are cached"


def test_head_loads_through_the_seam_and_recognises_its_classes(trained):
    from nels.encoders.base import Encoder, create_encoder
    from nels.encoders.head import HeadEncoder

    ds, head, _, _ = trained
    enc = create_encoder(str(head))
    assert isinstance(enc, HeadEncoder) and isinstance(enc, Encoder)
    assert isinstance(create_encoder(f"head:{head}"), HeadEncoder)
    assert enc.labels == list(CLASSES) and enc.dim == 1024 and enc.space == "head-yamnet"
    assert (enc.window, enc.hop, enc.sample_rate) == (2.0, 1.0, 16000)
    out = enc.encode(synth("noise", seconds=4.0, seed=99), SR)
    assert out.probs.shape == (3, 3) and np.allclose(out.probs.sum(1), 1, atol=1e-4)
    assert np.allclose(np.linalg.norm(out.embeddings, axis=1), 1, atol=1e-4) and out.raw.shape == (3, 1024)
    assert enc.labels[int(out.probs.mean(0).argmax())] == "noise"
    # the segment vector is the backbone's own
    yam = create_encoder("yamnet").encode(synth("noise", seconds=4.0, seed=99), SR)
    assert np.allclose(out.embeddings, yam.embeddings, atol=1e-5)
    for c in CLASSES:
        p = enc.clip_probs(synth(c, seconds=3.0, seed=77), SR)
        assert p.shape == (3,) and enc.labels[int(p.argmax())] == c


def test_ingest_text_search_and_tag_with_a_head(trained, tmp_path):
    from nels.ingest.runner import IngestOptions, ingest
    from nels.library import Library
    from nels.search.tag import tag_file

    _, head, _, _ = trained
    d = tmp_path / "in"
    for i, c in enumerate(CLASSES * 2):
        write_wav(d / f"{c}-{i}.wav", synth(c, seconds=3.0, seed=100 + i))
    lib = Library(tmp_path / "lib")
    rep = ingest(lib, [str(d)], model=str(head), options=IngestOptions(progress=False))
    assert len(rep.added) == 6 and not rep.failed
    assert lib.spaces() == ["head-yamnet"]
    res = lib.search(text="noise", k=2, mode="linguistic")
    assert [r["title"].split("-")[0] for r in res] == ["noise", "noise"], [r["title"] for r in res]
    res = lib.search(audio=synth("tone", seconds=3.0, seed=5), k=2, mode="acoustic")
    assert [r["title"].split("-")[0] for r in res] == ["tone", "tone"], [r["title"] for r in res]
    lib.close()

    from nels.encoders.base import create_encoder

    mixed = np.concatenate([synth("clicks", 4.0, seed=3), synth("tone", 4.0, seed=4)])
    events = tag_file(write_wav(tmp_path / "mixed.wav", mixed), create_encoder(str(head)), threshold=0.5)
    assert [e["label"] for e in events] == ["clicks", "tone"], events


def test_evaluate_classification_scores_a_head(trained, tmp_path):
    from nels.cli import main
    from nels.evaluate.classification import evaluate_classification

    ds, head, _, _ = trained
    r = evaluate_classification(str(ds), "folders", None, str(head), str(tmp_path / "ev"), progress=False)
    assert r["n_clips"] == 18 and r["pooling"] in ("windows-mean-prob", "windows-mean-logit")
    assert r["accuracy"] >= 0.9 and r["model_name"].endswith("-head-v1")
    other = "windows-mean-logit" if r["pooling"] == "windows-mean-prob" else "windows-mean-prob"
    assert evaluate_classification(str(ds), "folders", None, str(head), pooling=other, progress=False)["pooling"] == other
    assert main(["evaluate", "classification", "--dataset", str(ds), "--format", "folders", "--model", str(head),
                 "--pooling", "whole"]) == 2  # the CNN's pooling does not apply to a head


def test_cli_train_backbone(tmp_path, capsys):
    needs_yamnet()
    from nels.cli import main

    ds = make_dataset(tmp_path / "ds", per_class=4)
    out = tmp_path / "h"
    rc = main(["train", "--backbone", "yamnet", "--dataset", str(ds), "--format", "folders", "--out", str(out),
               "--cache", str(tmp_path / "c"), "--json",
               "--hparams", json.dumps({**FAST, "members": 1, "input": "embedding+scores", "views": [[0.24, -6]]})])
    assert rc == 0
    s = json.loads(capsys.readouterr().out)
    assert s["model"] == str(out)
    meta = json.loads((out / "model.json").read_text())
    assert meta["training"]["command"].startswith("nels train --backbone yamnet --dataset")
    # YAMNet's own 521 class scores (log-odds) beside its embedding; an extra view of each clip for training
    assert meta["input"] == "embedding+scores" and meta["layers"][0] == [1024 + 521, 32]
    assert meta["metrics"]["train_windows"] > 2 * meta["metrics"]["train_clips"]
    from nels.encoders.base import create_encoder

    enc = create_encoder(str(out))
    assert enc.labels[int(enc.clip_probs(synth("tone", seconds=3.0, seed=7), SR).argmax())] == "tone"
    assert main(["train", "--backbone", "yamnet", "--dataset", str(ds), "--format", "folders", "--out", str(out),
                 "--hparams", '{"no_such": 1}']) == 2


def test_bad_input_gives_clear_errors(tmp_path, trained):
    from nels.encoders.base import create_encoder
    from nels.errors import DatasetError, ModelError
    from nels.training.head import train_head

    ds, head, cache, _ = trained
    bad = tmp_path / "bad"
    shutil.copytree(ds, bad)
    (bad / "silence").mkdir()
    (bad / "silence" / "README.txt").write_text("no audio here")
    with pytest.raises(DatasetError, match="silence"):
        train_head(str(bad), "folders", None, str(tmp_path / "o1"), "yamnet", cache=str(cache), hparams=FAST,
                   quiet=True, progress=False)
    with pytest.raises(ModelError, match="backbone"):
        train_head(str(ds), "folders", None, str(tmp_path / "o2"), "yamnet:/no/such/yamnet.tflite", hparams=FAST,
                   quiet=True, progress=False)
    with pytest.raises(ModelError, match="window embeddings"):
        train_head(str(ds), "folders", None, str(tmp_path / "o3"), "baseline", hparams=FAST, quiet=True, progress=False)
    # a head whose backbone cannot be loaded, or is another set of weights, is refused with a way out
    moved = tmp_path / "moved"
    shutil.copytree(head, moved)
    meta = json.loads((moved / "model.json").read_text())
    (moved / "model.json").write_text(json.dumps({**meta, "backbone": "yamnet:/no/such/yamnet.tflite"}))
    with pytest.raises(ModelError, match="cannot be loaded"):
        create_encoder(str(moved))
    (moved / "model.json").write_text(json.dumps({**meta, "backbone_sha256": "0" * 64}))
    with pytest.raises(ModelError, match="retrain the head"):
        create_encoder(str(moved))
    (moved / "model.json").write_text(json.dumps(meta))
    (moved / "head.npz").write_bytes(b"not weights")
    with pytest.raises(ModelError, match="checksum"):
        create_encoder(str(moved))


def test_late_fusion_with_a_cnn(trained, tmp_path):
    """fuse_cnn: the weight is chosen on validation clips, the CNN is copied into the head folder and runs beside
    the backbone on the same segments; a CNN trained with another seed (other validation clips) is refused."""
    import torch

    from nels.audio.features import FeatureConfig
    from nels.encoders.base import create_encoder
    from nels.encoders.cnn import build_model, save_model
    from nels.errors import DatasetError
    from nels.ingest.runner import IngestOptions, ingest
    from nels.library import Library
    from nels.training.head import train_head

    ds, _, cache, _ = trained
    torch.manual_seed(0)
    cnn = tmp_path / "cnn"
    save_model(cnn, build_model(3, FeatureConfig().n_mels).eval(), list(CLASSES), FeatureConfig(), {}, "toy-cnn",
               {"training": {"exclude_fold": None, "seed": 0}, "pooling": "segments-mean-prob"})
    out = tmp_path / "fused"
    s = train_head(str(ds), "folders", None, str(out), "yamnet", seed=0, cache=str(cache), quiet=True, progress=False,
                   hparams={**FAST, "members": 1, "fuse_cnn": str(cnn), "fuse_weights": [0.0, 0.3]})
    assert set(s["metrics"]["fusion_validation_accuracy"]) == {"0.0", "0.3"}
    out2 = tmp_path / "fused2"
    train_head(str(ds), "folders", None, str(out2), "yamnet", seed=0, cache=str(cache), quiet=True, progress=False,
               hparams={**FAST, "members": 1, "fuse_cnn": str(cnn), "fuse_weights": [0.3]})
    meta = json.loads((out2 / "model.json").read_text())
    assert meta["fusion"]["weight"] == 0.3 and (out2 / "cnn" / "model.json").is_file()
    enc = create_encoder(str(out2))
    assert enc.fusion is not None and enc.fusion[1] == 0.3
    seg = enc.encode(synth("tone", seconds=4.0, seed=1), SR)
    assert seg.probs.shape == (3, 3) and np.allclose(seg.probs.sum(1), 1, atol=1e-4)
    p = enc.clip_probs(synth("tone", seconds=4.0, seed=1), SR)
    assert p.shape == (3,) and abs(float(p.sum()) - 1) < 1e-4
    d = tmp_path / "in"
    write_wav(d / "a.wav", synth("noise", seconds=3.0, seed=2))
    lib = Library(tmp_path / "lib")
    rep = ingest(lib, [str(d)], model=str(out2), options=IngestOptions(progress=False))
    assert len(rep.added) == 1 and not rep.failed
    lib.close()
    with pytest.raises(DatasetError, match="--seed"):
        train_head(str(ds), "folders", None, str(tmp_path / "f3"), "yamnet", seed=1, cache=str(cache), quiet=True,
                   progress=False, hparams={**FAST, "fuse_cnn": str(cnn)})
