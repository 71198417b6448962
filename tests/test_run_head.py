"""`nels run` on a library served by a head on YAMNet (`nels train --backbone yamnet`), not only on the own CNN.

The loop re-trains a linear classifier over the segment's mean window embedding (the encoder's `raw`) and writes it
as a head folder (`nels.learn.heads`: one format table); the head version's encoder must give exactly the
probabilities the loop measured. The round trip of such a folder needs no weights; the end-to-end cycle (train a
tiny head on synthesised tones, ingest, crawl the loopback site, learn, gate, re-index) needs the YAMNet weights
and ai-edge-litert, and skips cleanly without them."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from test_backbone_head import FAST, needs_yamnet
from videosite import VideoSite, synthetic_videos, tone_folders

from nels.errors import NelsError
from nels.learn import gate, heads, loop

CLASSES = {"low hum": 400.0, "whistle": 425.0, "beep": 450.0}  # ~6 % apart, detuned ~3 % a clip: some overlap


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _write_head(path: Path, members, mean, std, labels, **meta) -> Path:
    """A head folder as `nels train --backbone` writes it (model.json + head.npz), without a backbone at hand."""
    from nels.encoders.head import HeadNet

    path.mkdir(parents=True)
    np.savez(path / "head.npz", **HeadNet(members, mean, std).arrays())
    (path / "model.json").write_text(json.dumps({"format": "nels-head", "format_version": 1, "name": path.name,
                                                 "backbone": "yamnet", "backbone_sha256": "ab" * 32,
                                                 "labels": labels, "weights": "head.npz", **meta}))
    return path


def test_a_linear_head_version_round_trips_and_gives_the_loops_probabilities(tmp_path):
    from nels.encoders.head import HeadNet, pool

    rng = np.random.default_rng(0)
    d, labels = 16, ["a", "b", "c"]
    mlp = [[(rng.normal(size=(8, d)), rng.normal(size=8)), (rng.normal(size=(3, 8)), rng.normal(size=3))]
           for _ in range(2)]
    base = _write_head(tmp_path / "mlp", mlp, rng.normal(size=d), rng.uniform(0.5, 2, d), labels,
                       pooling="windows-mean-prob", input="embedding", metrics={"accuracy": 0.9},
                       fusion={"model": "cnn", "weight": 0.3}, licence="user data")
    fam = heads.family(base)
    assert fam is heads.FAMILIES["nels-head"]
    assert fam.read(base) == (None, None, labels)  # an MLP ensemble: no linear layer over the loop's vectors

    W, b = rng.normal(size=(4, d)).astype(np.float32), rng.normal(size=4).astype(np.float32)
    out = fam.write(base, tmp_path / "v1", W, b, labels + ["d"], "mlp-run-c1", {"learning": {"run": "run-c1"}})
    meta = json.loads((out / "model.json").read_text())
    assert meta["format"] == "nels-head" and meta["classifier"] == "linear" and meta["parent"] == "mlp"
    assert meta["backbone_sha256"] == "ab" * 32 and meta["labels"] == labels + ["d"]  # the same embedding caches
    assert meta["pooling"] == "windows-mean-logit" and meta["clip_pooling"] == "segments-mean-prob"
    assert meta["input"] == "embedding" and meta["layers"] == [[d, 4]] and meta["learning"] == {"run": "run-c1"}
    assert "fusion" not in meta and "metrics" not in meta and meta["licence"] == "user data"
    W2, b2, l2 = heads.read_backbone_head(out)
    assert np.array_equal(W2, W) and np.array_equal(b2, b) and l2 == labels + ["d"]

    # the stored net, pooled the version's way over a segment's windows = softmax(W mean(windows) + b): the loop's
    with np.load(out / "head.npz") as arr:
        net = HeadNet.from_arrays({k: arr[k] for k in arr.files})
    windows = rng.normal(size=(3, d)).astype(np.float32)
    seg = pool(net.log_probs(windows), meta["pooling"])
    assert np.allclose(seg, loop.clip_probs((W, b), loop.Split(windows.mean(0, keepdims=True), np.array([0]),
                                                                np.array([0])))[0], atol=1e-6)

    # any one-member one-layer head on the embedding (standardised) reads as the linear layer it is
    lin = _write_head(tmp_path / "lin", [[(W, b)]], rng.normal(size=d), rng.uniform(0.5, 2, d), labels + ["d"],
                      pooling="windows-mean-logit")
    Wl, bl, _ = heads.family(lin).read(lin)
    with np.load(lin / "head.npz") as arr:
        lnet = HeadNet.from_arrays({k: arr[k] for k in arr.files})
    assert np.allclose(_softmax(windows @ Wl.T + bl), np.exp(lnet.log_probs(windows)), atol=1e-5)

    # formats the loop does not re-train say so
    (tmp_path / "addon").mkdir()
    (tmp_path / "addon" / "model.json").write_text(json.dumps({"format": "nels-addon", "labels": labels}))
    with pytest.raises(NelsError, match="nels-addon"):
        heads.family(tmp_path / "addon")
    with pytest.raises(NelsError, match="no model.json"):
        heads.family(tmp_path)


def test_run_learns_gates_and_swaps_in_a_linear_version_of_a_yamnet_head(tmp_path, monkeypatch):
    needs_yamnet()
    from nels.audio.decode import decode
    from nels.cli import main
    from nels.encoders.base import create_encoder
    from nels.encoders.head import HeadEncoder
    from nels.ingest.runner import ingest
    from nels.learn.embed import embed_files
    from nels.learn.run import RunOptions, load_head, rollback, run
    from nels.metrics import average_precision
    from nels.store.library import Library
    from nels.training.datasets import load_dataset

    d = tone_folders(tmp_path / "data", CLASSES, {"seed": 4, "library": 1})
    d.update(tone_folders(tmp_path / "data", CLASSES, {"heldout": 3}, seconds=3.5, seed=5))  # 3 segments a clip
    head = tmp_path / "head"
    assert main(["train", "--dataset", str(d["seed"]), "--backbone", "yamnet", "--format", "folders", "--out",
                 str(head), "--cache", str(tmp_path / "cache"), "--hparams", json.dumps(FAST), "--json"]) == 0
    lib = Library(tmp_path / "lib")
    ingest(lib, [str(d["library"])], model=str(head))  # the library is served by the head (an MLP ensemble)
    site = VideoSite(synthetic_videos(CLASSES, per_class=3, distractors=1, seed=2))
    site.start()
    try:
        monkeypatch.setenv("NELS_YTDLP_SEARCH", site.search_template)
        rep = run(lib, RunOptions(dataset=str(d["seed"]), fmt="folders", heldout=str(d["heldout"]), allow_private=True,
                                  learn_every=0.0, pause=0.0, rate=100.0, per_cycle=6, iterations=1,
                                  audioset_examples=False), cycles=1, echo=False, install_signals=False)
    finally:
        site.stop()
    try:
        assert rep["cycles"] == 1
        cat = lib.catalogue
        steps = {s: cat.step_detail(1, s) for s in ("ingest", "learn", "gate", "reindex")}
        assert steps["ingest"]["detail"]["added"] > 0 and steps["learn"]["status"] == "done", steps["learn"]
        seed_v = next(v for v in cat.model_versions() if v["cycle"] == 0)
        cand = next(v for v in cat.model_versions() if v["cycle"] == 1)
        assert Path(seed_v["path"]) == head.resolve()

        # the version is a head folder: the seed's backbone and weights, a linear classifier
        meta = json.loads((Path(cand["path"]) / "model.json").read_text())
        seed_meta = json.loads((head / "model.json").read_text())
        assert meta["format"] == "nels-head" and meta["classifier"] == "linear" and meta["parent"] == seed_meta["name"]
        assert meta["backbone_sha256"] == seed_meta["backbone_sha256"] and meta["learning"]["warm_start"] is False
        W, b, labels = load_head(cand["path"])
        assert W.shape == (len(CLASSES), 1024) and set(labels) == set(CLASSES)
        assert load_head(head) == (None, None, seed_meta["labels"])

        # its encoder gives exactly what the loop measured: per segment softmax(W raw + b), per clip their mean
        enc = create_encoder(cand["path"])
        seed_enc = create_encoder(str(head))
        assert isinstance(enc, HeadEncoder) and enc.labels == labels
        held = load_dataset(str(d["heldout"]), "folders")
        files = [str(it.path) for it in held.items]
        X, clip = embed_files(seed_enc, files, lambda p: decode(p))  # the loop's held-out vectors (its cache)
        measured = loop.clip_probs((W, b), loop.Split(X, clip, np.zeros(len(files), int)))
        served, seed_served = [], []
        for f in files:
            x = decode(f, sr=enc.sample_rate)
            out = enc.encode(x, enc.sample_rate)
            assert np.allclose(out.probs, _softmax(out.raw @ W.T + b), atol=1e-5)
            served.append(enc.clip_probs(x, enc.sample_rate))
            seed_served.append(seed_enc.encode(x, enc.sample_rate).probs.mean(axis=0))
        assert np.allclose(np.stack(served), measured, atol=1e-5)

        # held-out AP per class recorded for both: the version's, and the seed's from its own encoder
        def ap(p, model_labels):
            y = np.array([held.labels[it.label] for it in held.items])
            return {c: round(average_precision((y == c)[np.argsort(-p[:, model_labels.index(c)])], int((y == c).sum())), 4)
                    for c in CLASSES}

        assert cand["per_class"] == pytest.approx(ap(np.stack(served), labels), abs=1e-4)
        assert cand["detail"]["serving_per_class"] == pytest.approx(ap(np.stack(seed_served), seed_meta["labels"]),
                                                                    abs=1e-4)
        assert seed_v["per_class"] == cand["detail"]["serving_per_class"]

        # the gate decided on those numbers, with a reason; a promotion was swapped in
        g = steps["gate"]["detail"]
        assert g["reason"] and g["reason"] == cand["reason"] and g["version"] == cand["name"]
        assert g["promoted"] == gate.decide(cand["per_class"], cand["detail"]["serving_per_class"], 0.05).promote
        if g["promoted"]:
            assert cand["status"] == "serving" and steps["reindex"]["status"] == "done"
        else:  # kept, labelled rejected; served anyway by a rollback (the same staged swap) to check the re-index
            assert cand["status"] == "rejected" and steps["reindex"]["status"] == "skipped"
            rollback(lib, cand["name"])
        assert lib.get_meta("model_name") == cand["name"] and cat.prob_models() == [cand["name"]]
        ids, probs, plabels, _ = cat.prob_matrix(cand["name"])  # the library's stored probabilities: the version's
        for cid, media in cat.clips(("id", "media_path"))[:3]:
            out = enc.encode(decode(str(lib.media_file(media)), sr=enc.sample_rate), enc.sample_rate)
            assert plabels == labels and np.allclose(probs[np.isin(ids, cat.segment_ids(cid))], out.probs, atol=1e-5)
    finally:
        lib.close()
