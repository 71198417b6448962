"""The sound-event CNN end to end on tiny synthetic datasets (no ESC-50 needed): learning, save/load,
resume, evaluation, and bad input."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from nels.audio.features import FeatureConfig
from conftest import write_wav
from nels.errors import DatasetError, ModelError

SR = 16_000
CLASSES = ["low_tone", "high_tone", "noise_burst", "chirp"]
TINY_ARCH = {"widths": [8, 16, 32], "emb_dim": 16, "dropout": 0.0}
FAST_HP = {"batch_size": 16, "lr": 1e-2, "mix_prob": 0.0, "val_fraction": 0.15, "crop_frames": 100, "min_steps": 6}


def _sound(cls: str, seconds: float, rng: np.random.RandomState) -> np.ndarray:
    n = int(seconds * SR)
    t = np.arange(n) / SR
    if cls == "low_tone":
        x = np.sin(2 * np.pi * rng.uniform(250, 350) * t)
    elif cls == "high_tone":
        x = np.sin(2 * np.pi * rng.uniform(2500, 3500) * t)
    elif cls == "noise_burst":
        x = np.zeros(n)
        for s in range(0, n, SR // 4):
            x[s:s + SR // 16] = rng.randn(min(SR // 16, n - s))
    else:  # chirp 500 -> 5000 Hz, repeating every 0.5 s
        tt = t % 0.5
        x = np.sin(2 * np.pi * (500 * tt + 4500 * tt ** 2))
    x = x + 0.01 * rng.randn(n)
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def _write_wav(path: Path, audio: np.ndarray) -> None:
    write_wav(path, audio, SR)


def make_folders(root: Path, per_class: int = 6, seconds: float = 1.5, seed: int = 0) -> Path:
    rng = np.random.RandomState(seed)
    for c in CLASSES:
        for i in range(per_class):
            _write_wav(root / c / f"{c}-{i}.wav", _sound(c, seconds, rng))
    return root


def make_esc50(root: Path, folds: int = 2, per_class_fold: int = 4, seed: int = 1) -> Path:
    rng = np.random.RandomState(seed)
    rows = []
    for f in range(1, folds + 1):
        for t, c in enumerate(CLASSES):
            for i in range(per_class_fold):
                stem = f"{f}-{t}{i:03d}-A-{t}"
                # the CSV says .wav, the disk holds .wav under the same stem (resolution is by stem)
                _write_wav(root / "audio" / f"{stem}.wav", _sound(c, 5.0, rng))
                rows.append({"filename": f"{stem}.wav", "fold": f, "target": t, "category": c,
                             "esc10": "False", "src_file": stem, "take": "A"})
    (root / "meta").mkdir(parents=True, exist_ok=True)
    with open(root / "meta" / "esc50.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


def train_tiny(root: Path) -> tuple[Path, Path]:
    """A folder-per-class synthetic dataset under `root` and a tiny CNN trained on it in seconds."""
    from nels.training.train import train

    ds = make_folders(root / "ds", per_class=6, seconds=3.0)
    s = train(str(ds), "folders", out=str(root / "cnn"), epochs=12, seed=0, cache=str(root / "cache"),
              arch=TINY_ARCH, hparams=FAST_HP, quiet=True, progress=False, threads=1)
    return ds, Path(s["model"])


@pytest.fixture(scope="module")
def folders_ds(tmp_path_factory):
    return make_folders(tmp_path_factory.mktemp("folders"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, folders_ds):
    """One tiny model trained on the folder dataset, shared by the tests that only read it."""
    from nels.training.train import train

    out = tmp_path_factory.mktemp("model") / "m"
    cache = tmp_path_factory.mktemp("cache")
    s = train(str(folders_ds), "folders", out=str(out), epochs=12, seed=0, cache=str(cache), arch=TINY_ARCH,
              hparams=FAST_HP, quiet=True, progress=False, threads=1)
    return Path(s["model"]), cache, s


def test_folders_dataset_is_learnt(trained, folders_ds, tmp_path):
    from nels.evaluate.classification import evaluate_classification

    model, cache, summary = trained
    assert summary["finished"] and (model / "model.json").exists() and (model / "MODEL_CARD.md").exists()
    meta = json.loads((model / "model.json").read_text())
    assert meta["labels"] == sorted(CLASSES)
    assert meta["feature_config"] == FeatureConfig().to_dict()
    # the model says how it was made: a `nels train` command line, the dataset and the seed
    assert meta["training"]["command"].startswith("nels train"), meta["training"]
    assert Path(meta["training"]["dataset"]).resolve() == Path(folders_ds).resolve()
    assert meta["training"]["format"] == "folders" and meta["training"]["seed"] == 0
    fresh = make_folders(tmp_path / "test", per_class=4, seed=7)  # unseen clips
    r = evaluate_classification(str(fresh), "folders", None, str(model), str(tmp_path / "rep"), str(cache), progress=False)
    assert r["accuracy"] >= 0.9, r
    assert r["mAP"] >= 0.9
    assert Path(r["confusion_png"]).stat().st_size > 1000


def test_encoder_protocol_and_round_trip(trained, tmp_path):
    from nels.encoders.cnn import CNNEncoder, pool_segments, save_model
    from nels.encoders.base import Encoder, load_encoder

    model_dir, _, _ = trained
    enc = load_encoder(model_dir)
    assert isinstance(enc, CNNEncoder) and isinstance(enc, Encoder)
    assert enc.space == "cnn" and enc.dim == TINY_ARCH["emb_dim"] and enc.labels == sorted(CLASSES)
    rng = np.random.RandomState(3)
    mels = [rng.randn(n, 64).astype(np.float32) * 10 - 40 for n in (200, 200, 57, 3, 501)]
    out = enc.encode_mels(mels)
    assert out.embeddings.shape == (5, enc.dim) and out.probs.shape == (5, len(CLASSES))
    np.testing.assert_allclose(np.linalg.norm(out.embeddings, axis=1), 1, atol=1e-4)
    np.testing.assert_allclose(out.probs.sum(1), 1, atol=1e-4)
    # batching must not change answers
    one = enc.encode_mels([mels[4]])
    np.testing.assert_allclose(one.probs[0], out.probs[4], atol=1e-5)
    # save -> load gives the same outputs
    import torch

    raw = torch.load(model_dir / "weights.pt", weights_only=True)
    from nels.encoders.cnn import build_model

    m = build_model(len(enc.labels), 64, enc.arch)
    m.load_state_dict({k: v.float() for k, v in raw.items()})
    save_model(tmp_path / "copy", m, enc.labels, enc.feature_config, enc.arch, "copy")
    again = CNNEncoder.load(tmp_path / "copy").encode_mels(mels)
    np.testing.assert_allclose(again.probs, out.probs, atol=1e-5)
    np.testing.assert_allclose(again.embeddings, out.embeddings, atol=1e-5)
    assert pool_segments(out.probs[:2]).shape == (len(CLASSES),)


def test_mini_esc50_cli_train_and_evaluate(tmp_path, capsys):
    from nels.cli import main

    ds = make_esc50(tmp_path / "esc")
    out = tmp_path / "model"
    rc = main(["train", "--dataset", str(ds), "--format", "esc50", "--exclude-fold", "1", "--out", str(out),
               "--epochs", "12", "--cache", str(tmp_path / "cache"), "--arch", json.dumps(TINY_ARCH), "--threads", "1",
               "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["metrics"]["test_fold"] == 1
    rc = main(["evaluate", "classification", "--dataset", str(ds), "--fold", "1", "--model", str(out),
               "--out", str(tmp_path / "rep"), "--cache", str(tmp_path / "cache"), "--json"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    assert r["n_clips"] == 16 and r["accuracy"] >= 0.85, r
    assert set(r["per_class_ap"]) == set(CLASSES)
    assert (tmp_path / "rep" / "confusion-fold1.png").exists()
    card = (out / "MODEL_CARD.md").read_text()
    assert "CC BY-NC 3.0" in card and "nels train" in card


def test_resume_from_checkpoint(tmp_path, folders_ds):
    from nels.training.train import train

    kw = dict(epochs=3, seed=3, cache=str(tmp_path / "c"), arch=TINY_ARCH, hparams=FAST_HP, quiet=True, progress=False,
              threads=1)
    s1 = train(str(folders_ds), "folders", out=str(tmp_path / "a"), max_epochs_this_run=1, **kw)
    assert not s1["finished"] and s1["epochs_done"] == 1
    assert (tmp_path / "a" / ".checkpoint.pt").exists() and not (tmp_path / "a" / "model.json").exists()
    s2 = train(str(folders_ds), "folders", out=str(tmp_path / "a"), **kw)
    assert s2["finished"] and s2["epochs_done"] == 3
    assert "resumed from" in (tmp_path / "a" / "training.log").read_text()
    # an uninterrupted run with the same seed ends in the same place
    s3 = train(str(folders_ds), "folders", out=str(tmp_path / "b"), **kw)
    h2 = json.loads((tmp_path / "a" / "model.json").read_text())["metrics"]
    h3 = json.loads((tmp_path / "b" / "model.json").read_text())["metrics"]
    assert h2["validation_accuracy"] == h3["validation_accuracy"] and s2["best_epoch"] == s3["best_epoch"]


# ---- bad input ---------------------------------------------------------------------------------


def test_missing_dataset(tmp_path, capsys):
    from nels.cli import main
    from nels.training.datasets import load_dataset

    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope", "esc50")
    assert main(["train", "--dataset", str(tmp_path / "nope"), "--format", "folders"]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(DatasetError, match="meta/esc50.csv"):
        load_dataset(tmp_path, "esc50")


def _small_esc(tmp_path) -> Path:
    return make_esc50(tmp_path / "e", folds=1, per_class_fold=1)


@pytest.mark.parametrize("edit,match", [
    (lambda rows: [{k: v for k, v in r.items() if k != "target"} for r in rows], "missing column"),
    (lambda rows: [{**r, "fold": "one"} for r in rows], "must be integers"),
    (lambda rows: [{**r, "target": "-1"} for r in rows], "target must be >= 0"),
    (lambda rows: [{**r, "category": "low_tone"} if i == 1 else r for i, r in enumerate(rows)], "share a category"),
    (lambda rows: rows + [{**rows[0], "filename": "x.wav", "category": "dog"}], "is 'dog' here"),
])
def test_malformed_csv(tmp_path, edit, match):
    from nels.training.datasets import load_esc50

    root = _small_esc(tmp_path)
    meta = root / "meta" / "esc50.csv"
    rows = edit(list(csv.DictReader(open(meta))))
    with open(meta, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(DatasetError, match=match):
        load_esc50(root)


def test_empty_class(tmp_path):
    from nels.training.datasets import load_esc50, load_folders

    root = make_folders(tmp_path / "f", per_class=1, seconds=0.5)
    for p in (root / "chirp").iterdir():
        p.unlink()
    with pytest.raises(DatasetError, match="chirp"):
        load_folders(root)
    esc = _small_esc(tmp_path)
    for p in (esc / "audio").glob("*-2.wav"):
        p.unlink()
    with pytest.raises(DatasetError, match="noise_burst"):
        load_esc50(esc)


def test_corrupt_and_wrong_length_clips_are_skipped_and_reported(tmp_path):
    from nels.training.datasets import compute_features, load_dataset

    root = make_folders(tmp_path / "f", per_class=2, seconds=0.5)
    (root / "chirp" / "broken.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
    msgs = []
    f = compute_features(load_dataset(root, "folders"), cache_dir=tmp_path / "c", log=msgs.append, progress=False)
    assert len(f.items) == 8 and any("broken.wav" in m and "decode" in m for m in msgs)
    assert all("broken" not in str(it.path) for it in f.items)
    # esc50: a clip of the wrong length is skipped, not mislabelled
    esc = make_esc50(tmp_path / "e", folds=1, per_class_fold=2)
    victim = sorted((esc / "audio").glob("*.wav"))[0]
    _write_wav(victim, np.zeros(SR, dtype=np.float32) + 0.1)
    msgs = []
    f = compute_features(load_dataset(esc, "esc50"), cache_dir=tmp_path / "c", log=msgs.append, progress=False)
    assert len(f.items) == 7 and any("wrong length" in m and victim.name in m for m in msgs)
    # a class that loses every clip is an error
    for p in (esc / "audio").glob("*-1.wav"):
        p.write_bytes(b"not audio")
    with pytest.raises(DatasetError, match="high_tone"):
        compute_features(load_dataset(esc, "esc50"), cache_dir=tmp_path / "c", log=lambda m: None, progress=False)


def test_mismatched_or_broken_model_refused(trained, tmp_path):
    from nels.encoders.cnn import CNNEncoder

    model_dir, _, _ = trained
    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    meta = json.loads((bad / "model.json").read_text())
    meta["feature_config"]["hop"] = 320
    (bad / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="another feature config.*hop=320"):
        CNNEncoder.load(bad)
    shutil.copy(model_dir / "model.json", bad / "model.json")
    w = (bad / "weights.pt").read_bytes()
    (bad / "weights.pt").write_bytes(w[: len(w) // 2])
    with pytest.raises(ModelError, match="checksum"):
        CNNEncoder.load(bad)
    (bad / "model.json").write_text("{not json")
    with pytest.raises(ModelError, match="broken model description"):
        CNNEncoder.load(bad)
    with pytest.raises(ModelError, match="no model.json"):
        CNNEncoder.load(tmp_path / "nothing")


def test_validation_split_keeps_recordings_together():
    """Clips cut from one ESC-50 recording (same FOLD-SOURCE prefix) never straddle train and validation:
    otherwise validation measures memory of the recording, not generalisation (it read ~9 points high)."""
    from nels.training.train import source_group, stratified_split

    assert source_group("1-100032-A-0.flac") == source_group("1-100032-B-0.wav") == "1-100032"
    assert source_group("my_recording.wav") == "my_recording"
    names = [f"2-{100 * c + src}-{take}-{c}" for c in range(3) for src in range(10) for take in "AB"]
    labels = np.array([int(n.rsplit("-", 1)[1]) for n in names])
    groups = np.array([source_group(n) for n in names])
    tr, va = stratified_split(labels, 0.2, np.random.RandomState(0), groups)
    assert len(va) and len(tr) + len(va) == len(names) and not set(groups[tr]) & set(groups[va])
    assert set(labels[va]) == {0, 1, 2}  # still every class


def test_augmentations_keep_shapes_and_levels():
    from nels.training.train import sample_crops, shift_bands

    rng = np.random.RandomState(0)
    mels = [np.linspace(-60, 0, 300 * 8, dtype=np.float32).reshape(300, 8)]
    crops = sample_crops(mels, [0, 0, 0], rng, 100, stretch=0.25)
    assert crops.shape == (3, 100, 8) and crops.min() >= -60 and crops.max() <= 0
    x = np.tile(np.arange(8, dtype=np.float32), (2, 5, 1))
    y = shift_bands(x.copy(), 2, np.random.RandomState(3))
    assert y.shape == x.shape
    for row in y[:, 0]:  # a shifted ramp, the edge band repeated into the gap
        assert np.all(np.diff(row) >= 0) and set(np.diff(row)) <= {0.0, 1.0}


def test_ema_last_epoch_and_fp32_options_train(tmp_path, folders_ds):
    from nels.encoders.cnn import CNNEncoder
    from nels.training.train import train

    hp = {**FAST_HP, "ema": 0.9, "select": "last", "precision": "fp32", "freq_shift": 1, "time_stretch": 0.1}
    s = train(str(folders_ds), "folders", out=str(tmp_path / "m"), epochs=6, seed=0, cache=str(tmp_path / "c"),
              arch={**TINY_ARCH, "stem_stride": [1, 1], "freq_pool": "flatten"}, hparams=hp, quiet=True,
              progress=False, threads=1)
    assert s["best_epoch"] == 6  # 'last': the final (EMA) weights are kept, whatever validation said
    enc = CNNEncoder.load(s["model"])
    assert enc.arch["freq_pool"] == "flatten" and enc.meta["metrics"]["validation_files"]
    mel = np.zeros((150, enc.feature_config.n_mels), np.float32) - 50
    assert enc.encode_mels([mel]).probs.shape == (1, len(CLASSES))


def _roll_classes(state: dict) -> dict:
    """A state dict whose output rows are rolled by one: the model hears class c and says class c+1."""
    import torch

    return {**state, "fc.weight": torch.roll(state["fc.weight"], 1, dims=0),
            "fc.bias": torch.roll(state["fc.bias"], 1, dims=0)}


def _permuted_teacher(model: Path, out: Path) -> Path:
    """A copy of the model folder `model` with its classes rolled by one (`_roll_classes`)."""
    import torch

    from nels.encoders.cnn import WEIGHTS_FILE, _sha256

    shutil.copytree(model, out)
    torch.save(_roll_classes(torch.load(out / WEIGHTS_FILE, weights_only=True)), out / WEIGHTS_FILE)
    meta = json.loads((out / "model.json").read_text())
    meta["weights_sha256"] = _sha256(out / WEIGHTS_FILE)
    (out / "model.json").write_text(json.dumps(meta))
    return out


def test_distillation_follows_the_teacher(trained, folders_ds, tmp_path):
    """With all of the loss on the teacher, the student learns what the teacher says, not the labels: a
    teacher that names every class one off makes a student that does too (so the teacher term is live).
    A student that ignored the teacher (kd_weight 0) names the true class of ~every clip, so it agrees with
    this teacher on ~none and its accuracy is far above chance: both assertions below fail for it."""
    from nels.encoders.cnn import CNNEncoder
    from nels.evaluate.classification import evaluate_classification
    from nels.training.datasets import compute_features, load_dataset
    from nels.training.train import train

    model, cache, _ = trained
    teacher = _permuted_teacher(model, tmp_path / "teacher")
    # 24 epochs: at 12 the student had learnt 3 of the 4 rolled classes on some machines (bf16 or not)
    hp = {**FAST_HP, "teacher": str(teacher), "kd_weight": 1.0, "kd_temperature": 1.0, "pooling": "whole",
          "select": "last"}  # validation scores the true labels, which this teacher contradicts
    s = train(str(folders_ds), "folders", out=str(tmp_path / "student"), epochs=24, seed=0, cache=str(cache),
              arch=TINY_ARCH, hparams=hp, quiet=True, progress=False, threads=1)
    enc = CNNEncoder.load(s["model"])
    assert enc.meta["pooling"] == "whole" and enc.meta["training"]["hparams"]["teacher"] == str(teacher)
    fresh = make_folders(tmp_path / "fresh", per_class=8, seed=11)  # 32 unseen clips
    r = evaluate_classification(str(fresh), "folders", None, s["model"], str(tmp_path / "rep"), str(cache), progress=False)
    assert r["pooling"] == "whole" and r["n_clips"] == 8 * len(CLASSES)
    # it no longer names the true class: at most chance plus two standard errors of a chance-level score
    chance = 1 / len(CLASSES)
    assert r["accuracy"] <= chance + 2 * np.sqrt(chance * (1 - chance) / r["n_clips"]), r
    # ...but the teacher's, which is wrong on (nearly) every clip, so agreeing with it is no accident
    t = CNNEncoder.load(teacher)
    feats = compute_features(load_dataset(str(fresh), "folders"), enc.feature_config, str(cache), progress=False)
    truth = [it.label for it in feats.items]
    said = [t.predict_clip(m, "whole").argmax() for m in feats.mels]
    assert np.mean(np.equal(said, truth)) <= 0.1  # the rolled teacher really contradicts the labels
    agree = np.mean([enc.predict_clip(m, "whole").argmax() == s_ for m, s_ in zip(feats.mels, said)])
    assert agree >= 0.75, agree


def test_teacher_that_could_leak_is_refused(trained, folders_ds, tmp_path):
    from nels.training.train import train

    model, cache, _ = trained
    kw = dict(epochs=1, cache=str(cache), arch=TINY_ARCH, quiet=True, progress=False, threads=1)
    with pytest.raises(DatasetError, match="leak"):  # another seed: another validation split
        train(str(folders_ds), "folders", out=str(tmp_path / "a"), seed=1,
              hparams={**FAST_HP, "teacher": str(model)}, **kw)
    other = shutil.copytree(folders_ds, tmp_path / "other")
    shutil.rmtree(other / CLASSES[-1])
    with pytest.raises(DatasetError, match="other classes"):
        train(str(other), "folders", out=str(tmp_path / "b"), seed=0, hparams={**FAST_HP, "teacher": str(model)}, **kw)
    with pytest.raises(DatasetError, match="teacher"):
        train(str(folders_ds), "folders", out=str(tmp_path / "c"), seed=0,
              hparams={**FAST_HP, "teacher": str(tmp_path / "nowhere")}, **kw)
    other_seed = shutil.copytree(model, tmp_path / "other-seed")
    meta = json.loads((other_seed / "model.json").read_text())
    meta["training"]["seed"] = 1
    (other_seed / "model.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="leak"):  # every member of an ensemble teacher is checked
        train(str(folders_ds), "folders", out=str(tmp_path / "e"), seed=0,
              hparams={**FAST_HP, "teacher": [str(model), str(other_seed)]}, **kw)
    with pytest.raises(DatasetError, match="pooling"):
        train(str(folders_ds), "folders", out=str(tmp_path / "d"), seed=0, hparams={**FAST_HP, "pooling": "max"}, **kw)


def test_ensemble_teacher_teaches_the_average_probability(trained, folders_ds, tmp_path):
    import copy

    import torch

    from nels.encoders.cnn import CNNEncoder
    from nels.training.train import teacher_logits, train

    model, cache, _ = trained
    s = train(str(folders_ds), "folders", out=str(tmp_path / "f"), seed=0, epochs=1, cache=str(cache), arch=TINY_ARCH,
              hparams={**FAST_HP, "teacher": [str(model), str(model)]}, quiet=True, progress=False, threads=1)
    assert s["epochs_done"] == 1
    m = CNNEncoder.load(model).model
    rolled = copy.deepcopy(m)
    rolled.load_state_dict(_roll_classes(m.state_dict()))
    x = np.random.RandomState(0).randn(3, 120, 64).astype(np.float32) * 10 - 40
    one = teacher_logits([m], x, False)
    both = teacher_logits([m, rolled], x, False)  # two teachers that disagree
    p1, p2 = torch.softmax(one, 1), torch.softmax(torch.roll(one, 1, dims=1), 1)
    assert torch.allclose(torch.softmax(both, 1), (p1 + p2) / 2, atol=1e-5)


def test_fine_tuning_starts_from_every_layer_of_a_model(trained, folders_ds, tmp_path):
    """hparams init: the network starts as the given model (every layer, its mel normalisation, the output rows
    of the classes both have); a class the model lacks starts at random. With a learning rate of ~0, what is
    saved is the start: so the copy is checked, and a run without init differs."""
    import torch

    from nels.training.train import train

    model, cache, _ = trained
    more = shutil.copytree(folders_ds, tmp_path / "more")
    first = sorted(p for p in more.iterdir() if p.is_dir())[0]
    shutil.copytree(first, more / "zz_new_class")  # a fifth class the init model lacks
    kw = dict(epochs=1, seed=0, cache=str(cache), quiet=True, progress=False, threads=1)
    hp = {**FAST_HP, "lr": 1e-12, "weight_decay": 0.0, "precision": "fp32"}
    s = train(str(more), "folders", out=str(tmp_path / "ft"), hparams={**hp, "init": str(model)}, **kw)
    old = torch.load(model / "weights.pt", weights_only=True)
    new = torch.load(Path(s["model"]) / "weights.pt", weights_only=True)
    old_labels = json.loads((model / "model.json").read_text())["labels"]
    new_labels = json.loads((Path(s["model"]) / "model.json").read_text())["labels"]
    assert new_labels[-1] == "zz_new_class" and new_labels[:-1] == old_labels
    for k, v in old.items():
        if k.startswith("fc.") or "running_" in k or "num_batches" in k:  # batch-norm statistics follow the data
            continue
        assert torch.allclose(v.float(), new[k].float(), atol=1e-2), k
    assert torch.allclose(old["fc.weight"].float(), new["fc.weight"][:-1].float(), atol=1e-3)
    assert "fine-tuning from" in (tmp_path / "ft" / "training.log").read_text()
    fresh = train(str(more), "folders", out=str(tmp_path / "scratch"), hparams=hp, arch=TINY_ARCH, **kw)
    scratch = torch.load(Path(fresh["model"]) / "weights.pt", weights_only=True)
    assert not torch.allclose(scratch["fc.weight"][:-1].float(), old["fc.weight"].float(), atol=1e-3)
    with pytest.raises(DatasetError, match="init"):
        train(str(more), "folders", out=str(tmp_path / "bad"), hparams={**hp, "init": str(tmp_path)}, **kw)
