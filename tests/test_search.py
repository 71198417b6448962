"""Search by text and by sound on a library indexed with a small CNN trained on synthetic classes."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import write_wav
from nels.errors import DecodeError, QueryError
from test_cnn import _sound, train_tiny


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    from nels.library import Library
    from nels.ingest.runner import IngestOptions, ingest

    root = tmp_path_factory.mktemp("search")
    ds, model = train_tiny(root)
    lib = Library(root / "lib")
    ingest(lib, [str(ds)], model=str(model), options=IngestOptions(progress=False))
    lib.model_dir = str(model)
    return lib


def cls(r):
    return Path(r["source"]).parent.name


def test_text_query_ranks_the_named_class_first_and_explains(lib):
    res = lib.search(text="low tone", k=5)
    assert res.mode == "linguistic"
    assert [cls(r) for r in res].count("low_tone") >= 4
    assert "low tone" in res[0]["explanation"] and res[0]["labels"][0]["label"] == "low_tone"


def test_audio_query_finds_the_same_sound_and_says_what_it_is(lib, tmp_path):
    q = write_wav(tmp_path / "q.wav", _sound("chirp", 3.0, np.random.RandomState(99)))
    res = lib.search(audio=q, k=5)
    assert res.mode == "acoustic" and [cls(r) for r in res].count("chirp") >= 4
    assert res.query_labels[0]["label"] == "chirp"
    # a part of a file: --start/--end
    res2 = lib.search(audio=q, start=1.0, end=2.5, k=3)
    assert cls(res2[0]) == "chirp"


def test_filters_and_paging(lib):
    p1 = lib.search(text="noise burst", k=3, page=1)
    p2 = lib.search(text="noise burst", k=3, page=2)
    assert len(p1) == 3 and len(p2) == 3 and not {r["clip_id"] for r in p1} & {r["clip_id"] for r in p2}
    only = lib.search(text="noise burst", k=20, label="high_tone")
    assert only and all(any(l["label"] == "high_tone" for l in r["labels"][:3]) for r in only)
    src = lib.search(text="noise burst", k=20, source="chirp-1")
    assert [Path(r["source"]).name for r in src] == ["chirp-1.wav"]


def test_bad_queries_get_clear_errors(lib, tmp_path):
    with pytest.raises(QueryError, match="empty"):
        lib.search(text="   ")
    with pytest.raises(QueryError, match="limit is 1000"):
        lib.search(text="dog " * 2500)
    bad = tmp_path / "x.wav"
    bad.write_text("not audio")
    with pytest.raises(DecodeError):
        lib.search(audio=bad)
    with pytest.raises(QueryError, match="needs an audio query"):
        lib.search(text="hum", mode="acoustic")


def test_no_good_match_says_so(lib):
    res = lib.search(text="a lecture on medieval tax law", mode="linguistic")
    # the coverage notice says it in one sentence (issue 18): no class for the words, and the closest ones
    assert len(res) == 0 and res.notice.startswith("NELS has no class for 'a lecture on medieval tax law'; closest:")


def test_text_search_on_a_library_without_classifier(tmp_path, sounds):
    from nels.library import Library
    from nels.ingest.runner import IngestOptions, ingest

    lib = Library(tmp_path / "lib")
    ingest(lib, [str(sounds)], model="baseline", options=IngestOptions(progress=False))
    with pytest.raises(QueryError, match="nels reindex"):
        lib.search(text="a chirp")


def test_cli_search_json_contract_and_tag(lib, tmp_path):
    cmd = [sys.executable, "-m", "nels.cli", "--library", str(lib.path)]
    out = subprocess.run(cmd + ["search", "high tone", "--json", "-k", "3"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)  # the object of GET /api/search: results, notice, coverage, mode, ...
    rows = answer["results"]
    assert len(rows) == 3 and answer["coverage"]["covered"] and answer["notice"] is None
    assert {"clip_id", "source", "title", "start", "end", "score", "relevance", "parts", "labels",
            "explanation"} <= set(rows[0])
    assert all(0 <= r["relevance"] <= 1 for r in rows)
    # a long file: 4 s of low tone, then 4 s of noise bursts -> two events with times
    rng = np.random.RandomState(5)
    f = write_wav(tmp_path / "long.wav", np.concatenate([_sound("low_tone", 4.0, rng), _sound("noise_burst", 4.0, rng)]))
    out = subprocess.run(cmd + ["tag", str(f), "--model", lib.model_dir, "--threshold", "0.5", "--json"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    ev = {e["label"]: e for e in json.loads(out.stdout)}
    assert ev["low_tone"]["start"] == 0.0 and ev["low_tone"]["end"] <= 5.0
    assert ev["noise_burst"]["start"] >= 3.0 and ev["noise_burst"]["end"] == 8.0


def test_weak_matches_come_with_a_notice(lib, tmp_path):
    """A label that matches the words, but that no indexed segment is recognised as, is flagged."""
    import shutil

    from nels.library import Library
    from nels.ingest.runner import IngestOptions, ingest

    only_tones = tmp_path / "tones"
    for f in sorted(Path(lib.model_dir).parent.joinpath("ds", "low_tone").iterdir())[:3]:
        (only_tones / "low").mkdir(parents=True, exist_ok=True)
        shutil.copy(f, only_tones / "low" / f.name)
    small = Library(tmp_path / "small")
    ingest(small, [str(only_tones)], model=lib.model_dir, options=IngestOptions(progress=False))
    res = small.search(text="chirp", mode="linguistic")
    assert res and "clearly recognised" in res.notice
    assert small.search(text="low tone", mode="linguistic").notice is None


def test_a_library_indexed_with_other_weights_is_refused_until_reindexed(tmp_path):
    """An upgraded model at the same path (new weights, same folder) must not be mixed silently with an
    index its predecessor built: search and ingest name the fix, `nels reindex` applies it."""
    import shutil

    from nels.errors import ModelMismatchError
    from nels.library import Library
    from nels.ingest.reindex import reindex
    from nels.ingest.runner import IngestOptions, ingest
    from nels.training.train import train
    from test_cnn import FAST_HP, TINY_ARCH

    ds, model = train_tiny(tmp_path)
    lib = Library(tmp_path / "lib")
    ingest(lib, [str(ds / "chirp")], model=str(model), options=IngestOptions(progress=False))
    assert lib.search(text="chirp", k=1)
    before = lib.prob_matrix()[1].copy()
    # the model folder is replaced by a retrained one (another seed: other weights, same name)
    shutil.rmtree(model)
    train(str(ds), "folders", out=str(model), epochs=3, seed=1, cache=str(tmp_path / "cache"), arch=TINY_ARCH,
          hparams=FAST_HP, quiet=True, progress=False, threads=1)
    lib = Library(tmp_path / "lib", create=False)  # a new process, in effect
    with pytest.raises(ModelMismatchError, match="nels reindex"):
        lib.search(text="chirp", k=1)
    with pytest.raises(ModelMismatchError, match="nels reindex"):
        ingest(lib, [str(ds / "low_tone")], model=str(model), options=IngestOptions(progress=False))
    done = reindex(lib, None, progress=False)
    assert done["failed"] == 0 and done["clips"] == len(list((ds / "chirp").iterdir()))
    lib = Library(tmp_path / "lib", create=False)
    assert lib.search(text="chirp", k=1)
    assert not np.allclose(lib.prob_matrix()[1], before)  # re-encoded by the new weights, not skipped
    assert reindex(lib, None, progress=False)["clips"] == 0  # and a second run has nothing left to do
