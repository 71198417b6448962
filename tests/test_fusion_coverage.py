"""Fusion knows which classifier covers a query (issue 14): a result's relevance from several classifiers is a
mixture over which of them cover the query, each weighted by its P(covered) ** gamma
(`nels.search.calibration.covered_relevance`), so a classifier without a class for the query ("guitar" for the
ESC-50 CNN) cannot lift its nearest wrong class above what the covering classifier found."""
from __future__ import annotations

import itertools

import pytest

from nels.search import calibration as cal

C, Y = "linguistic:softmax", "linguistic:yamnet"


def _model(feats):
    m, how = cal.relevance_model(feats)
    if how != "fitted":
        pytest.skip("nels/data/calibration.json has no fitted relevance model for the two classifiers")
    return m


def test_a_classifier_that_does_not_cover_the_query_does_not_speak():
    single_y, both = _model([Y]), _model([C, Y])
    for c_val, y_val in itertools.product([0.0, 0.2, 0.99], [0.01, 0.5, 0.95]):
        v = {C: c_val, Y: y_val}
        # the CNN covers nothing: YAMNet's own model, whatever mass the CNN put anywhere
        assert cal.covered_relevance(v, {C: 0.0, Y: 1.0}, 4.0) == pytest.approx(cal.relevance({Y: y_val}, single_y))
        # both cover the query for sure: the two-classifier model
        assert cal.covered_relevance(v, {C: 1.0, Y: 1.0}, 4.0) == pytest.approx(cal.relevance(v, both))


def test_covered_relevance_is_a_probability_between_its_terms_and_monotone():
    _model([C, Y])
    for cc, cy, g in itertools.product([0.05, 0.5, 0.9], [0.3, 0.97], [1.0, 4.0]):
        prev = -1.0
        for y_val in (0.001, 0.05, 0.3, 0.8, 0.99):
            v = {C: 0.4, Y: y_val}
            r = cal.covered_relevance(v, {C: cc, Y: cy}, g)
            terms = [cal.relevance({f: v[f] for f in s}, cal.relevance_model(list(s))[0]) for s in ([C, Y], [C], [Y])]
            assert min(terms) - 1e-9 <= r <= max(terms) + 1e-9 and 0.0 <= r <= 1.0
            assert r >= prev - 1e-12  # more mass on the query's labels is never less relevant
            prev = r
    # a larger gamma trusts a half-sure classifier less: the CNN's wrong-class mass counts for less
    v = {C: 0.95, Y: 0.02}
    assert cal.covered_relevance(v, {C: 0.5, Y: 1.0}, 4.0) < cal.covered_relevance(v, {C: 0.5, Y: 1.0}, 1.0)


def test_features_without_coverage_are_in_every_term_and_nobody_covering_falls_back():
    _model([C, Y])
    v = {C: 0.6, Y: 0.3}
    # no classifier covers the query at all: every classifier's view, as without coverage
    assert cal.covered_relevance(v, {C: 0.0, Y: 0.0}, 2.0) == pytest.approx(
        cal.relevance(v, cal.relevance_model([C, Y])[0]))
    # one classifier only: its own model whatever its coverage
    assert cal.covered_relevance({Y: 0.3}, {Y: 0.2}, 4.0) == pytest.approx(
        cal.relevance({Y: 0.3}, cal.relevance_model([Y])[0]))


@pytest.fixture
def two_classifier_library(tmp_path):
    """3 s tones (300, 300, 3000 Hz) indexed by two toy classifiers: the 3-class tone encoder (its own words:
    "low tone", ...) and one whose classes are AudioSet's ("Hum", "Beep, bleep", "Whistle"), as YAMNet's are."""
    import importlib

    from conftest import write_wav
    from test_vocabulary_cli import tone

    from nels.encoders import registry
    from nels.encoders.base import register_encoder
    from nels.ingest.runner import IngestOptions, ingest
    from nels.library import Library

    import plugins.tones as mod

    importlib.reload(mod)

    class AudioSetNamed(mod.ToneEncoder):
        name, space = "tones-audioset-v1", "tones_audioset"
        labels = ["Hum", "Beep, bleep", "Whistle"]

    register_encoder("tones_audioset", lambda arg: AudioSetNamed())
    d = tmp_path / "in"
    for i, f in enumerate([300, 300, 3000]):
        write_wav(d / f"t{i}-{f}.wav", tone(f, seed=i))
    lib = Library(tmp_path / "lib")
    assert len(ingest(lib, [str(d)], model="tones+tones_audioset", options=IngestOptions(progress=False)).added) == 3
    yield lib
    lib.close()
    registry._REGISTRY.pop("tones", None)
    registry._REGISTRY.pop("tones_audioset", None)


def test_search_ranks_two_classifiers_by_their_coverage_weighted_relevance(two_classifier_library):
    lib = two_classifier_library
    gamma = cal.coverage_gamma()
    if gamma is None or cal.relevance_model([C, Y])[1] != "fitted":
        pytest.skip("nels/data/calibration.json has no coverage-weighted fusion")
    for q in ("whistle", "low tone", "hum", "guitar"):
        res = lib.search(text=q, mode="linguistic", k=3)
        assert res.calibration == "fitted" and len(res) == 3, (q, res.calibration)
        cov = res.coverage["models"]
        covers = {C: cov["tones-v1"], Y: cov["tones-audioset-v1"]}
        rel = [r["relevance"] for r in res]
        assert rel == sorted(rel, reverse=True) and [r["score"] for r in res] == rel, (q, rel)
        for r, values in zip(res, res.features):
            scale = res.coverage["score"] if not res.coverage["covered"] else 1.0
            assert r["relevance"] == pytest.approx(cal.covered_relevance(values, covers, gamma) * scale, abs=2e-4)
    # what each query names comes first: "Whistle" / "high tone" is the 3000 Hz clip, "Hum" the 300 Hz ones
    assert lib.search(text="whistle", mode="linguistic", k=3)[0]["title"].endswith("3000.wav")
    assert lib.search(text="hum", mode="linguistic", k=3)[0]["title"].endswith("-300.wav")


# -- audio: the own CNN's spaces weighted by whether it learned the query sound (bench/fit_audio_fusion.py) -----
A = ("acoustic:cnn", "acoustic:yamnet", "joint_audio:joint")
WEIGHTS = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "models" / "yamnet" / \
    "yamnet_classification.tflite"


def _audio_fusion():
    f = (cal.calibration().get("relevance") or {}).get("audio_fusion")
    if not f or f.get("rule") != "mixture":
        pytest.skip("nels/data/calibration.json has no audio fusion mixture")
    return f


def test_audio_fusion_terms_mix_the_learned_and_never_learned_models_by_the_gate():
    f = _audio_fusion()
    assert cal.audio_fusion_terms(A[:2], {"softmax": 0.9}) is None  # acoustic mode (no joint space): not this fusion
    assert cal.audio_fusion_terms(A, {"yamnet": 1.0}) is None  # no gating classifier in the library
    for gate in (0.0, 0.3, 0.8, 1.0):
        (q, m1, f1), (r, m2, f2) = cal.audio_fusion_terms(list(reversed(A)), {"softmax": gate, "yamnet": 1.0})
        assert q == pytest.approx(gate ** f["gamma"]) and q + r == pytest.approx(1.0)
        assert m1 == f["covered"] and m2 == f["not_covered"] and f1 == f2 == sorted(A)
    v = {"acoustic:cnn": 0.9, "acoustic:yamnet": 0.4, "joint_audio:joint": 0.95}
    learned = cal.mixture_relevance(v, cal.audio_fusion_terms(A, {"softmax": 1.0}))
    unknown = cal.mixture_relevance(v, cal.audio_fusion_terms(A, {"softmax": 0.0}))
    # a sound the CNN never learned: its joint space's high cosine counts for much less
    assert learned == pytest.approx(cal.relevance(v, f["covered"])) and unknown == pytest.approx(
        cal.relevance(v, f["not_covered"]))
    assert f["not_covered"]["weights"]["joint_audio:joint"] < f["covered"]["weights"]["joint_audio:joint"]


@pytest.mark.skipif(not WEIGHTS.is_file(), reason="needs the YAMNet weights in ../shared/models/yamnet")
def test_audio_search_in_a_cnn_and_yamnet_library_ranks_by_the_gated_mixture(tmp_path):
    from conftest import synth, write_wav

    from nels.ingest.runner import IngestOptions, ingest
    from nels.library import Library

    _audio_fusion()
    for i, kind in enumerate(["tone", "noise", "chirp", "clicks", "tone"]):
        write_wav(tmp_path / "in" / f"{kind}{i}.wav", synth(kind, seconds=3.0, seed=i))
    lib = Library(tmp_path / "lib")
    ingest(lib, [str(tmp_path / "in")], model="default+yamnet", options=IngestOptions(progress=False))
    try:
        res = lib.search(audio=str(tmp_path / "in" / "tone0.wav"), k=5)  # the default mode: fused
        assert res.mode == "fused" and res.calibration == "fitted" and len(res) == 5
        # the gate is the CNN's P(explained) from its class probabilities (the one the fusion was chosen with;
        # the coverage notice also reads its embedding: nels.search.coverage.audio_coverage)
        from nels.audio.decode import decode
        from nels.encoders.base import create_encoder
        from nels.search.coverage import probs_explained
        from nels.search.query import encode_query_audio

        cnn = create_encoder("default")
        probs = encode_query_audio(cnn, decode(str(tmp_path / "in" / "tone0.wav"), sr=16000), 16000)[1]
        terms = cal.audio_fusion_terms(A, {"softmax": round(probs_explained(cnn.labels, probs), 4)})
        for r, values in zip(res, res.features):
            assert set(values) == set(A)
            assert r["relevance"] == pytest.approx(cal.mixture_relevance(values, terms), abs=2e-4)
        rel = [r["relevance"] for r in res]
        assert rel == sorted(rel, reverse=True) and [r["score"] for r in res] == rel
        assert res[0]["title"] == "tone0.wav"
    finally:
        lib.close()
