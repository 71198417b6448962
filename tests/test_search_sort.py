"""Freesound-style basics (issue 18, section 6): search results sorted by duration, label or source, and the
duration filters for audio queries too."""
from __future__ import annotations

import io
import wave

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from conftest import SR, write_wav  # noqa: E402


def tone(freq: float, seconds: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    x = np.sin(2 * np.pi * freq * t) + 0.01 * np.random.default_rng(seed).standard_normal(t.size)
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def wav_bytes(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(SR)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    import importlib

    from nels.encoders import registry
    from nels.ingest.runner import IngestOptions, ingest
    from nels.library import Library
    from nels.web.app import create_app

    import plugins.tones as mod

    importlib.reload(mod)
    root = tmp_path_factory.mktemp("sortlib")
    for name, f, sec in [("a-high-5s", 3000, 5.0), ("b-high-2s", 3050, 2.0), ("c-high-9s", 2950, 9.0),
                         ("d-low-3s", 300, 3.0), ("e-low-7s", 310, 7.0)]:
        write_wav(root / "in" / f"{name}.wav", tone(f, sec, seed=int(sec)))
    with Library(root / "lib") as lib:
        assert len(ingest(lib, [str(root / "in")], model="tones", options=IngestOptions(progress=False)).added) == 5
    with TestClient(create_app(root / "lib"), raise_server_exceptions=False) as c:
        yield c
    registry._REGISTRY.pop("tones", None)


def _clips(res) -> list[str]:
    seen = []
    for r in res["results"]:
        if r["title"] not in seen:
            seen.append(r["title"])
    return seen


def test_text_results_sorted_by_duration_label_and_source(client):
    base = {"q": "high tone", "mode": "linguistic", "k": 50}
    rel = client.get("/api/search", params=base).json()
    assert rel["sort"] == "relevance"
    short = client.get("/api/search", params={**base, "sort": "duration"}).json()
    durs = [r["duration"] for r in short["results"]]
    assert durs == sorted(durs) and len(durs) == len(rel["results"]), durs
    long_ = client.get("/api/search", params={**base, "sort": "-duration"}).json()
    assert [r["duration"] for r in long_["results"]] == sorted(durs, reverse=True)
    assert _clips(long_)[0] == "c-high-9s.wav"
    by_source = client.get("/api/search", params={**base, "sort": "source"}).json()
    names = [r["source"] for r in by_source["results"]]
    assert names == sorted(names, key=str.lower)
    by_label = client.get("/api/search", params={**base, "sort": "label"}).json()
    tops = [r["labels"][0]["label"] for r in by_label["results"]]
    assert tops == sorted(tops)
    # pages of a sorted answer follow each other
    p1 = client.get("/api/search", params={**base, "k": 3, "sort": "duration"}).json()
    p2 = client.get("/api/search", params={**base, "k": 3, "page": 2, "sort": "duration"}).json()
    assert [r["duration"] for r in p1["results"] + p2["results"]] == durs[:6] and p1["has_more"]
    assert client.get("/api/search", params={**base, "sort": "loudness"}).status_code == 422


def test_audio_search_takes_duration_filters_and_sort(client):
    files = {"audio": ("q.wav", wav_bytes(tone(3000, 2.0, seed=5)), "audio/wav")}
    res = client.post("/api/search", files=files, data={"k": "50", "min_duration": "4", "sort": "-duration"})
    assert res.status_code == 200, res.text
    body = res.json()
    durs = [r["duration"] for r in body["results"]]
    assert durs and min(durs) >= 4 and durs == sorted(durs, reverse=True), durs
    res = client.post("/api/search", files=files, data={"k": "50", "max_duration": "3"}).json()
    assert res["results"] and max(r["duration"] for r in res["results"]) <= 3
