"""The learning loop on synthetic embeddings: strategies, recording and resuming."""
from pathlib import Path

import numpy as np
import pytest

from nels.library import Library
from nels.learn import loop, select


def test_clarity_index_band_and_semantic_agreement():
    p = np.array([[0.90, 0.05, 0.05],   # CI 0.85: clear -> selected
                  [0.50, 0.45, 0.05],   # CI 0.05: ambiguous -> not
                  [0.99, 0.01, 0.00],   # CI 0.98: trivial -> not (above the band)
                  [0.05, 0.80, 0.15]])  # CI 0.65, class 1
    assert select.clarity_index(p) == pytest.approx([0.85, 0.05, 0.98, 0.65])
    view = select.PoolView(p, text_sims=np.array([[0.9, 0.1, 0.0], [0.9, 0.1, 0.0], [0.9, 0.1, 0.0],
                                                  [0.1, 0.0, 0.9]]), taken=np.zeros(4, bool))
    assert select.Clarity().select(view, cap=5) == {0: 0, 3: 1}
    # the text of clip 3 names class 2 first, class 0 second: with top=1 it disagrees with class 1
    assert select.ClaritySemantic(top=1).select(view, cap=5) == {0: 0}
    assert select.Threshold(0.7).select(view, cap=5) == {0: 0, 2: 0, 3: 1}
    assert select.Threshold(0.7).select(view, cap=1) == {2: 0, 3: 1}  # per-class cap keeps the best


def test_calibrated_thresholds_reach_target_precision():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    conf = rng.random(400)
    pred = np.where(conf > 0.6, y, 1 - y)  # confident predictions are right, the others wrong
    probs = np.zeros((400, 2))
    probs[np.arange(400), pred] = 0.5 + conf / 2
    probs[np.arange(400), 1 - pred] = 0.5 - conf / 2
    cal = select.Calibrated(precision=0.95).fit(probs, y)
    sel = cal.select(select.PoolView(probs, taken=np.zeros(400, bool)), cap=1000)
    precision = np.mean([y[i] == k for i, k in sel.items()])
    assert precision >= 0.95 and len(sel) > 100


def _world(seed=0, C=4, d=8):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((C, d)) * 2

    def split(n_per, truth_noise=0.0):
        y = np.repeat(np.arange(C), n_per)
        X = centers[np.repeat(y, 2)] + rng.standard_normal((len(y) * 2, d)) * 3.0
        return loop.Split(X.astype(np.float32), np.repeat(np.arange(len(y)), 2), y)

    seed_s, pool, test = split(2), split(30), split(20)
    sims = np.eye(C)[pool.y] + 0.1 * rng.random((pool.n_clips, C))
    return loop.LoopData([f"c{i}" for i in range(C)], seed_s, pool, test, sims)


def test_loop_improves_records_and_resumes(tmp_path):
    data = _world()
    lib = Library(tmp_path / "lib")
    rec = loop.recorder(lib.catalogue, "r1", "clarity", "m", data.labels)
    full, _ = loop.run(data, select.Clarity(0.2, 1.0), iterations=4, cap=5, patience=10)
    assert full[-1]["map"] > full[0]["map"]  # pseudo-labels help a 2-clips-per-class seed
    part, _ = loop.run(data, select.Clarity(0.2, 1.0), iterations=2, cap=5, patience=10, record=rec)
    assert [r["iteration"] for r in part] == [0, 1, 2]
    done = loop.load_done(lib.catalogue, "r1", "clarity", data.labels)
    resumed, _ = loop.run(data, select.Clarity(0.2, 1.0), iterations=4, cap=5, patience=10, done=done, record=rec)
    assert [r["iteration"] for r in resumed] == [0, 1, 2, 3, 4]
    assert [round(r["map"], 6) for r in resumed] == [round(r["map"], 6) for r in full]
    rows = lib.conn.execute("SELECT COUNT(*) FROM iterations WHERE run='r1'").fetchone()[0]
    assert rows == 5


def test_loop_stops_when_no_class_improves():
    data = _world()
    # a strategy that never selects anything: no class can improve, patience 2 stops after 2 iterations
    class Nothing:
        name = "nothing"

        def select(self, view, cap):
            return {}

    hist, _ = loop.run(data, Nothing(), iterations=10, cap=5, patience=2)
    assert [r["iteration"] for r in hist] == [0, 1, 2]


def test_nels_learn_on_a_library_with_feedback_and_a_new_class(tmp_path, http_server, monkeypatch):
    """End to end: a mini ESC-50 (seed + test), a crawled pool, website feedback, a class added by query."""
    import json

    from conftest import synth, write_wav
    from nels.library import Library
    from nels.ingest.runner import IngestOptions, ingest
    from nels.learn.library import learn
    from nels.training.train import train
    from test_cnn import FAST_HP, TINY_ARCH, _sound, make_esc50

    monkeypatch.setattr("nels.learn.embed.CACHE", tmp_path / "cache")
    esc = make_esc50(tmp_path / "esc", folds=2, per_class_fold=4)
    s = train(str(esc), "esc50", exclude_fold=1, out=str(tmp_path / "cnn"), epochs=10, seed=0,
              cache=str(tmp_path / "fcache"), arch=TINY_ARCH, hparams=FAST_HP, quiet=True, progress=False, threads=1)
    rng = np.random.RandomState(3)
    pool = tmp_path / "pool"
    for c in ["low_tone", "high_tone", "noise_burst", "chirp"]:
        for i in range(4):
            write_wav(pool / f"{c}-{i}.wav", _sound(c, 3.0, rng))
    lib = Library(tmp_path / "lib")
    ingest(lib, [str(pool)], model=s["model"], options=IngestOptions(progress=False))
    # feedback from the website: one clip judged relevant for "high tone", one not relevant
    ids = {r[1]: r[0] for r in lib.conn.execute("SELECT id, title FROM clips")}
    lib.conn.execute("INSERT INTO feedback(query, clip_id, relevant, created_at) VALUES('high tone', ?, 1, 0)",
                     (ids["high_tone-0.wav"],))
    lib.conn.execute("INSERT INTO feedback(query, clip_id, relevant, created_at) VALUES('chirp', ?, 0, 0)",
                     (ids["chirp-0.wav"],))
    # a new class, crawled through yt-dlp from a local "search engine"
    base, www, srv = http_server
    for i in range(3):
        write_wav(www / f"clk{i}.wav", synth("clicks", 3.0, seed=i))
        srv.files.add(f"clk{i}.wav")
    monkeypatch.setenv("NELS_YTDLP_SEARCH", base + "/search?q={query}&n={n}")
    res = learn(lib, str(esc), "esc50", test_fold=1, strategy="clarity", iterations=2, patience=5, run="r1",
                add_classes=[("clicking", "clicking sound")], per_query=3, apply=True, progress=False)
    assert len(res["map"]) == 3 and res["classes"] == 5 and res["feedback_labels"] == 1
    meta = json.loads((Path(res["model"]) / "model.json").read_text())
    assert meta["labels"][-1] == "clicking" and meta["parent"]
    assert lib.conn.execute("SELECT COUNT(*) FROM iterations WHERE run='r1'").fetchone()[0] == 3
    # applied: the library is re-indexed with the new model, whose classes include the new one
    assert lib.get_meta("model_name") == meta["name"]
    hits = lib.search(text="clicking", mode="linguistic", k=3)
    assert hits and all(lib.clip(h["clip_id"])["query"] == "clicking sound" for h in hits)
    # a re-run of the same run resumes: nothing new to do
    again = learn(lib, str(esc), "esc50", test_fold=1, strategy="clarity", iterations=2, patience=5, run="r1",
                  progress=False)
    assert again["map"] == res["map"]


def test_embeddings_cached_per_file_and_shared_by_head_only_versions(tmp_path, monkeypatch):
    """`nels run` embeds its seed, held-out and pool clips once: cached on disk per file (path, size, time) or per
    content hash, keyed by the backbone's weights, which a head-only version (save_with_head) shares with its parent."""
    from conftest import synth, write_wav
    from nels.audio.decode import decode
    from nels.encoders.base import create_encoder
    from nels.learn import embed
    from nels.learn.heads import save_with_head
    from nels.learn.run import load_head

    monkeypatch.setattr(embed, "CACHE", tmp_path / "cache")
    files = [str(write_wav(tmp_path / f"{k}.wav", synth(k, 2.5))) for k in ("tone", "clicks")]
    enc = create_encoder("default")
    loads = []

    def load(p):
        loads.append(p)
        return decode(p)

    X, clip = embed.embed_files(enc, files, load)
    assert len(loads) == 2 and set(clip) == {0, 1} and X.shape[1] == enc.dim
    again = embed.embed_files(enc, files, load)  # from the cache: nothing decoded
    assert len(loads) == 2 and np.array_equal(again[0], X) and np.array_equal(again[1], clip)
    write_wav(Path(files[1]), synth("chirp", 3.5))  # a changed file is encoded again
    X2, clip2 = embed.embed_files(enc, files, load)
    assert loads[2:] == [files[1]] and np.array_equal(X2[clip2 == 0], X[clip == 0])

    W, b, labels = load_head(enc.path)
    child = create_encoder(str(save_with_head(Path(enc.path), tmp_path / "v2", W * 0.5, b, labels, "child")))
    assert embed.encoder_key(child) == embed.encoder_key(enc)  # the same layers below the head
    e = embed.embed_cached(child, "somehash", lambda: decode(files[0]))
    assert np.allclose(e, X[clip == 0], atol=1e-5)  # the child's raw embeddings are its parent's
    assert embed.embed_cached(enc, "somehash", lambda: pytest.fail("cached")).shape == e.shape
