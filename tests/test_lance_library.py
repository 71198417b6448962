"""A library whose vectors are in the lance store (NELS_VECTOR_STORE=lance), end to end: ingest synthesised
clips with the shipped CNN (+ joint space), search by text and by sound in-process, and the same through the
website served by `nels serve --workers 2`."""
from __future__ import annotations

import json
import urllib.parse
import urllib.request
import uuid

import numpy as np
import pytest

pytest.importorskip("lancedb")

from devserver import Server, build_library, synth_sounds, wav_bytes  # noqa: E402

from nels.library import Library  # noqa: E402
from nels.store.vectors import open_store  # noqa: E402


@pytest.fixture
def lance_library(tmp_path, monkeypatch):
    monkeypatch.setenv("NELS_VECTOR_STORE", "lance")
    return build_library(tmp_path, model="default")


def clip_ids(lib: Library) -> dict[str, int]:
    return {lib.clip(cid)["title"].removesuffix(".wav"): cid for (cid,) in lib.catalogue.clips(("id",))}


def test_lance_library_searches_like_the_exact_faiss_index(lance_library):
    lib = Library(lance_library, create=False)
    assert lib.get_meta("vector_store") == "lance"
    names = clip_ids(lib)
    for space in ("cnn", "joint"):
        st = lib.store(space)
        assert type(st).__name__ == "LanceStore" and st.count() == lib.stats()["spaces"][space]["vectors"]
        assert (lance_library / "indexes" / f"{space}.lance").is_dir()
        exact = open_store("faiss", None, st.dim, hnsw_threshold=10 ** 9)
        exact.sync(lib.catalogue, space)
        q = np.random.default_rng(0).standard_normal((5, st.dim)).astype(np.float32)
        s1, f1 = st.search(q, st.count())  # every vector ranked (equal vectors tie in any order)
        s2, f2 = exact.search(q, st.count())
        assert np.allclose(s1, s2, atol=1e-5) and all(set(a) == set(b) for a, b in zip(f1, f2))
    assert not list(lance_library.glob("indexes/*.faiss"))

    sounds = synth_sounds()
    for name in ("clicks", "chirp", "hum"):
        top = lib.search(audio=sounds[name].astype(np.float32), mode="acoustic", k=3)[0]
        assert top["clip_id"] == names[name]
    by_text = lib.search(text="clock ticking", k=5)
    assert by_text and {r["clip_id"] for r in by_text} <= set(names.values())
    lib.close()


def test_nels_serve_with_two_workers_on_a_lance_library(lance_library):
    lib = Library(lance_library, create=False)
    names = clip_ids(lib)
    expected = [r["segment_id"] for r in lib.search(text="clock ticking", k=5)]
    lib.close()
    srv = Server(lance_library, workers=2).start(timeout=600)  # two processes load every model: slow on 2 cores
    try:
        for _ in range(4):  # several connections: both worker processes are likely to answer one
            q = urllib.parse.urlencode({"q": "clock ticking", "k": 5})
            with urllib.request.urlopen(f"{srv.url}/api/search?{q}", timeout=120) as r:
                body = json.load(r)
            assert [x["segment_id"] for x in body["results"]] == expected
        boundary = uuid.uuid4().hex
        data = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"audio\"; filename=\"q.wav\"\r\n"
                f"Content-Type: audio/wav\r\n\r\n").encode() + wav_bytes(synth_sounds()["chirp"]) + \
               (f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"mode\"\r\n\r\nacoustic"
                f"\r\n--{boundary}--\r\n").encode()
        req = urllib.request.Request(f"{srv.url}/api/search", data=data, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with urllib.request.urlopen(req, timeout=120) as r:
            top = json.load(r)["results"][0]
        assert top["clip_id"] == names["chirp"]
        with urllib.request.urlopen(f"{srv.url}{top['media_url']}", timeout=60) as r:
            assert r.status == 200 and r.read()[:4] == b"RIFF"
        with urllib.request.urlopen(f"{srv.url}/", timeout=60) as r:
            assert r.status == 200 and b"<html" in r.read().lower()
    finally:
        srv.stop()
