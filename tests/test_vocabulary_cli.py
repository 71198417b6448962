"""`nels vocabulary` and GET /api/vocabulary: every class the library's models know, with the number of
segments each labels (a library of the toy 3-class tone encoder, tests/plugins/tones.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import SR, write_wav


def tone(freq: float, seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    x = np.sin(2 * np.pi * freq * t) + 0.01 * np.random.default_rng(seed).standard_normal(t.size)
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


@pytest.fixture
def tones_library(tmp_path):
    """A library of 2 low-tone and 1 high-tone clips (3 s: 5 segments each), indexed by the tone encoder."""
    import importlib

    from nels.encoders import registry
    from nels.ingest.runner import IngestOptions, ingest
    from nels.library import Library

    import plugins.tones as mod

    importlib.reload(mod)
    d = tmp_path / "in"
    for i, f in enumerate([300, 300, 3000]):
        write_wav(d / f"t{i}-{f}.wav", tone(f, seed=i))
    lib = Library(tmp_path / "lib")
    rep = ingest(lib, [str(d)], model="tones", options=IngestOptions(progress=False))
    assert len(rep.added) == 3
    yield lib
    lib.close()
    registry._REGISTRY.pop("tones", None)


def _segments(lib) -> int:
    return int(lib.catalogue.stats()["segments"])


def test_vocabulary_lists_every_class_with_segment_counts(tones_library, capsys):
    from nels.cli import main

    lib = tones_library
    n = _segments(lib)
    assert main(["--library", str(lib.path), "vocabulary", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    (m,) = out["models"]
    assert m["model"] == "tones-v1" and m["classes"] == 3 and m["segments"] == n == out["segments"]
    counts = {r["label"]: r["segments"] for r in m["labels"]}
    assert set(counts) == {"low tone", "middle tone", "high tone"}  # the class no segment has is listed too
    assert counts["middle tone"] == 0 and counts["low tone"] == 2 * counts["high tone"] > 0
    assert [r["label"] for r in m["labels"]][:2] == ["low tone", "high tone"]  # most frequent first

    # the human table (the default action), and `list` with --all
    assert main(["--library", str(lib.path), "vocabulary"]) == 0
    text = capsys.readouterr().out
    assert "tones-v1: 3 classes" in text and "low tone" in text and "middle tone" not in text
    assert main(["--library", str(lib.path), "vocabulary", "list", "--all"]) == 0
    assert "middle tone" in capsys.readouterr().out

    # a removed clip no longer counts
    lib.remove_clips([lib.catalogue.clips()[-1]["id"]])
    assert main(["--library", str(lib.path), "vocabulary", "list", "--json"]) == 0
    after = {r["label"]: r["segments"] for r in json.loads(capsys.readouterr().out)["models"][0]["labels"]}
    assert sum(after.values()) == _segments(lib) < n


def test_vocabulary_candidates_lists_the_logged_weak_queries(tones_library, capsys):
    from nels.cli import main

    lib = tones_library
    assert main(["--library", str(lib.path), "vocabulary", "candidates"]) == 0
    assert "no open weakly covered queries" in capsys.readouterr().out
    lib.catalogue.log_weak_query("guitar", 0.1, "high tone")
    lib.catalogue.log_weak_query("Guitar ", 0.1, "high tone")
    lib.catalogue.log_weak_query("asdfgh", 0.05, None)
    assert main(["--library", str(lib.path), "vocabulary", "candidates", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["query"], r["count"]) for r in rows] == [("guitar", 2), ("asdfgh", 1)]
    assert main(["--library", str(lib.path), "vocabulary", "candidates"]) == 0
    text = capsys.readouterr().out
    assert "guitar" in text and "high tone" in text


def test_vocabulary_api_and_page(tones_library):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from nels.web.app import create_app

    lib = tones_library
    with TestClient(create_app(lib.path)) as c:
        r = c.get("/api/vocabulary")
        assert r.status_code == 200
        (m,) = r.json()["models"]
        counts = {x["label"]: x["segments"] for x in m["labels"]}
        assert counts["low tone"] == 2 * counts["high tone"] > 0 and counts["middle tone"] == 0
        page = c.get("/vocabulary")
        assert page.status_code == 200 and "vocabulary.js" in page.text
        assert "initVocabulary" in c.get("/static/vocabulary.js").text
