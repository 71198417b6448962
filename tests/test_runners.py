"""Runner conformance: every registered runner turns the same input into the identical library (same clip
hashes, segments, labels; vectors within 1e-5), with duplicates, failures and skips recorded the same."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import synth, write_wav


def _snapshot(lib) -> dict:
    """What a library holds, keyed by content (ids may differ between runners)."""
    cat = lib.catalogue
    out = {}
    for cid, h in cat.clips(("id", "content_hash")):
        c = cat.clip(cid)
        segs = c["segments"]
        vecs = {}
        for space in lib.spaces():
            rows = dict(zip(*[list(x) for x in _vectors(lib, space)]))
            vecs[space] = np.stack([rows[s["segment_id"]] for s in segs])
        out[h] = {"spans": [(s["start"], s["end"]) for s in segs],
                  "labels": [[(l["label"], l["prob"]) for l in s["labels"]] for s in segs],
                  "duration": c["duration"], "title": c["title"], "vectors": vecs}
    return out


def assert_same_library(ref, lib, tolerance: float = 1e-5) -> None:
    """`lib` holds what `ref` holds, keyed by content: clips, segment spans, labels, durations, titles, and every
    space's vectors within `tolerance` (ids may differ between runners)."""
    a, b = _snapshot(ref), _snapshot(lib)
    assert sorted(a) == sorted(b)
    for h in a:
        assert a[h]["spans"] == b[h]["spans"] and a[h]["labels"] == b[h]["labels"], h
        assert a[h]["duration"] == b[h]["duration"] and a[h]["title"] == b[h]["title"]
        assert list(a[h]["vectors"]) == list(b[h]["vectors"]), h
        for space in a[h]["vectors"]:
            assert np.abs(a[h]["vectors"][space] - b[h]["vectors"][space]).max() <= tolerance, (h, space)


def _vectors(lib, space):
    ids, vecs = [], []
    for i, v in lib.catalogue.iter_vectors(space):
        ids += i.tolist()
        vecs += list(v)
    return ids, vecs


@pytest.fixture
def corpus(tmp_path):
    d = tmp_path / "corpus"
    for i, kind in enumerate(["tone", "high", "noise", "clicks", "chirp", "hum"]):
        write_wav(d / f"{kind}.wav", synth(kind, seconds=2.5 + i, seed=i))
    write_wav(d / "copy-of-tone.wav", synth("tone", seconds=2.5, seed=0))  # same content: a duplicate
    (d / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really")  # a decode failure
    return d


@pytest.mark.parametrize("runner", ["local", "pool"])
def test_runner_gives_the_reference_library(tmp_path, corpus, runner):
    from nels.ingest.runner import IngestOptions, ingest
    from nels.ingest.runners import make_runner, runner_names
    from nels.library import Library

    assert set(runner_names()) >= {"local", "pool"}
    ref = Library(tmp_path / "ref")
    ref_rep = ingest(ref, [str(corpus)], model="default", options=IngestOptions(progress=False),
                     runner=make_runner("local"))
    lib = Library(tmp_path / runner)
    rep = ingest(lib, [str(corpus)], model="default", options=IngestOptions(progress=False),
                 runner=make_runner(runner, processes=2))
    assert len(rep.added) == len(ref_rep.added) == 6
    assert rep.duplicates == ref_rep.duplicates == 1
    assert [u for u, _ in rep.failed] == [u for u, _ in ref_rep.failed] and len(rep.failed) == 1
    assert_same_library(ref, lib)
    # a re-run through the same runner finds everything done: nothing fetched or added again
    again = ingest(lib, [str(corpus)], model="default", options=IngestOptions(progress=False),
                   runner=make_runner(runner, processes=2))
    assert again.added == [] and again.duplicates == 0
    ref.close()
    lib.close()


def test_unknown_runner_is_refused():
    from nels.errors import NelsError
    from nels.ingest.runners import make_runner

    with pytest.raises(NelsError, match="local"):
        make_runner("spark")
