"""Issue 18, text coverage on a library of the shipped ESC-50 CNN: a paraphrase of one of its classes gets no
"NELS has no class" notice (it used to for a quarter of fold 1's paraphrases), a word for a sound it was never
taught and gibberish still do, and the notice is one sentence in the API, the JSON and the CLI. The
library is three synthesised clips; what is measured is the query, not the audio."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from conftest import synth, write_wav
from nels.search import coverage

# paraphrases written for this test (not from nels/data/eval/ or the training phrasings); today's main
# flagged every one of them as out of vocabulary
PARAPHRASES = ["an ambulance wailing down the avenue", "a police cruiser with its siren on",
               "a smoker hacking in the morning", "someone tapping away at a laptop",
               "a tomcat yowling on the fence", "sizzling rain on the pavement", "the miaow of a house pet"]
NOT_TAUGHT = ["guitar", "violin", "an electric guitar solo", "a lecture on tax law", "asdfgh qwerty"]


@pytest.fixture(scope="module")
def cnn_library(tmp_path_factory):
    from nels.ingest.runner import IngestOptions, ingest
    from nels.library import Library

    root = tmp_path_factory.mktemp("cov")
    for i, kind in enumerate(["tone", "noise", "chirp"]):
        write_wav(root / "in" / f"{i}-{kind}.wav", synth(kind, seconds=2.0))
    lib = Library(root / "lib")
    rep = ingest(lib, [str(root / "in")], model="default", options=IngestOptions(progress=False))
    assert len(rep.added) == 3
    yield lib
    lib.close()


def test_paraphrases_of_known_classes_get_no_notice(cnn_library):
    flagged = []
    for q in PARAPHRASES:
        res = cnn_library.search(text=q, k=2, log_weak=False)
        assert res.coverage["covered"] == (not (res.notice or "").startswith("NELS has no class")), (q, res.notice)
        if not res.coverage["covered"]:
            flagged.append((q, res.coverage["score"]))
    # the fitted model still misses some (4 % of fold 1's paraphrases, bench/RESULTS.md): at most one of these
    assert len(flagged) <= 1 and "the miaow of a house pet" not in dict(flagged), flagged


def test_sounds_it_was_never_taught_and_gibberish_still_get_it(cnn_library):
    for q in NOT_TAUGHT:
        res = cnn_library.search(text=q, k=2, log_weak=False)
        assert not res.coverage["covered"] and res.coverage["score"] < res.coverage["threshold"], (q, res.coverage)
        assert res.notice.startswith(f"NELS has no class for {q!r}"), res.notice


def one_sentence(notice: str) -> bool:
    """One sentence: a single final full stop, at most one parenthetical besides the (0.42) similarities,
    and none of the other notices tacked on."""
    bare = re.sub(r" \(\d\.\d\d\)", "", notice)
    return (notice.endswith(".") and bare.count(".") == 1 and bare.count("(") <= 1 and bare.count(")") <= 1
            and "no known sound" not in notice and "clearly recognised" not in notice)


def test_the_guitar_notice_is_one_sentence_in_api_json_and_cli(cnn_library, capsys):
    from nels.cli import main

    res = cnn_library.search(text="guitar", k=3, log_weak=False)
    assert one_sentence(res.notice), res.notice
    assert "AudioSet's 'Guitar'" in res.notice and "; closest: " in res.notice, res.notice
    assert res.to_dict()["notice"] == res.notice
    path = str(cnn_library.path)
    assert main(["--library", path, "search", "guitar", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["notice"] == res.notice and d["coverage"]["covered"] is False
    assert main(["--library", path, "search", "guitar"]) == 0
    out = capsys.readouterr().out
    notes = [l for l in out.splitlines() if l.startswith("note: ")]
    assert notes == [f"note: {res.notice}"], notes
    assert "related sound words" not in out  # words near a query no class covers would only mislead


def test_the_fitted_model_uses_the_phrasings_it_ships():
    """The phrasing vectors are those of the shipped phrasings, cached after the first use (keyed by their
    hash), and the fitted model has a weight for each of the three features."""
    texts, owners, vecs = coverage.phrasing_bank()
    assert len(texts) == len(owners) == vecs.shape[0] > 1000
    with np.load(coverage.phrasing_vectors_file(coverage.phrasings_sha256(texts))) as z:
        assert str(z["sha256"]) == coverage.phrasings_sha256(texts) and z["vectors"].shape == vecs.shape
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-3)
    p = coverage.calibration()["text_coverage"]
    assert len(p["weights"]) == len(coverage.text_features(0.5, 0.5, 0.5)) == 3
    # a better match to a phrasing of a covered class raises P(covered); a better match elsewhere lowers it
    assert coverage.text_coverage_probability(0.45, 0.45, 0.8) > coverage.text_coverage_probability(0.45, 0.45)
    assert coverage.text_coverage_probability(0.45, 0.9) < coverage.text_coverage_probability(0.45, 0.45)
