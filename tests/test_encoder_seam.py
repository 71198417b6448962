"""The Encoder seam: a new encoder is one file plus one registration line (tests/plugins/tones.py), and
ingest, text search, audio search and tag then work through it, with its own front end and sample rate."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import SR, write_wav


def tone(freq: float, seconds: float = 3.0, sr: int = SR, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    x = np.sin(2 * np.pi * freq * t) + 0.01 * np.random.default_rng(seed).standard_normal(t.size)
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


@pytest.fixture
def tones_registered():
    import importlib

    from nels.encoders import registry

    import plugins.tones as mod

    importlib.reload(mod)  # (re-)registers "tones", whatever ran before
    yield mod
    registry._REGISTRY.pop("tones", None)


def test_registered_encoder_ingests_searches_and_tags(tmp_path, tones_registered):
    from nels.encoders.base import create_encoder, encoder_kinds
    from nels.ingest.runner import IngestOptions, ingest
    from nels.library import Library
    from nels.search.tag import tag_file

    assert "tones" in encoder_kinds()
    enc = create_encoder("tones")
    out = enc.encode(tone(3000), SR)  # 16 kHz in, the encoder resamples to its own 8 kHz
    assert out.probs.shape == (len(out.starts), 3) and out.labels[int(out.probs.mean(0).argmax())] == "high tone"
    assert np.allclose(np.diff(out.starts), 0.5)  # its own 1 s / 0.5 s framing

    d = tmp_path / "in"
    for i, (name, f) in enumerate([("low", 300), ("middle", 1000), ("high", 3000)] * 2):
        write_wav(d / f"{name}-{i}.wav", tone(f, seed=i))
    lib = Library(tmp_path / "lib")
    rep = ingest(lib, [str(d)], model="tones", options=IngestOptions(progress=False))
    assert len(rep.added) == 6 and not rep.failed
    assert lib.spaces() == ["tones"] and lib.get_meta("model_name") == "tones-v1"

    res = lib.search(text="high tone", k=2, mode="linguistic")
    assert [r["title"].split("-")[0] for r in res] == ["high", "high"], [r["title"] for r in res]
    res = lib.search(audio=tone(1000, seed=9), k=2, mode="acoustic")
    assert [r["title"].split("-")[0] for r in res] == ["middle", "middle"], [r["title"] for r in res]

    mixed = np.concatenate([tone(300, 4.0), tone(3000, 4.0)])
    events = tag_file(write_wav(tmp_path / "mixed.wav", mixed), enc, threshold=0.5)
    assert [e["label"] for e in events] == ["low tone", "high tone"], events
    assert events[0]["start"] == 0.0 and 3.0 <= events[1]["start"] <= 4.0 and events[1]["end"] == 8.0
    lib.close()


def test_unknown_encoder_names_the_known_kinds(tones_registered):
    from nels.encoders.base import create_encoder
    from nels.errors import ModelError

    with pytest.raises(ModelError, match="tones"):
        create_encoder("no-such-encoder")


def test_two_encoders_in_one_library_are_fused_where_they_cover_the_query(tmp_path, tones_registered):
    """"default+tones": the own CNN and the toy tone classifier both index every segment; a text query is
    ranked by the classifiers whose vocabulary covers it (the tone words: only the tone model), an audio
    query by both acoustic spaces."""
    from nels.ingest.runner import IngestOptions, ingest
    from nels.library import Library

    d = tmp_path / "in"
    for i, (name, f) in enumerate([("low", 300), ("middle", 1000), ("high", 3000)] * 2):
        write_wav(d / f"{name}-{i}.wav", tone(f, seed=i))
    lib = Library(tmp_path / "lib")
    rep = ingest(lib, [str(d)], model="default+tones", options=IngestOptions(progress=False))
    assert len(rep.added) == 6 and not rep.failed
    st = lib.stats()
    assert {"cnn", "tones"} <= set(st["spaces"]) and len(st["classifiers"]) == 2, st
    assert "tones-v1" in st["classifiers"]

    res = lib.search(text="high tone", k=2, mode="linguistic")
    assert [r["title"].split("-")[0] for r in res] == ["high", "high"], [r["title"] for r in res]
    assert all("[tones-v1]" in r["explanation"] for r in res), [r["explanation"] for r in res]
    assert all(set(r["scores"]) == {"linguistic:tones-v1"} for r in res), [r["scores"] for r in res]

    res = lib.search(audio=tone(3000, seed=9), k=2, mode="acoustic")
    assert [r["title"].split("-")[0] for r in res] == ["high", "high"], [r["title"] for r in res]
    # a library indexed with two encoders refuses to be extended with one of them alone
    from nels.errors import ModelMismatchError

    with pytest.raises(ModelMismatchError, match="reindex"):
        ingest(lib, [str(d)], model="default", options=IngestOptions(progress=False))
    lib.close()
