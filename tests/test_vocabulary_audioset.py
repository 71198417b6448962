"""The AudioSet vocabulary (nels/data/audioset/vocabulary.json, built from the ontology) and hierarchy-aware
linguistic search (nels.encoders.concepts + nels.search.linguistic): on a small ontology fixture, with a
bag-of-words text encoder (no MiniLM), a query for a parent ranks its children's segments; the shipped file
is what the generator makes from ../shared (skipped without it)."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from nels.encoders import audioset
from nels.encoders.concepts import ConceptSpace, concept_members, dominators
from nels.encoders.text import load_vocabulary
from nels.search import linguistic

SHARED = Path(__file__).resolve().parents[2] / "shared"
ONTOLOGY = SHARED / "datasets" / "audioset-ontology" / "ontology.json"

# A miniature AudioSet ontology: Animal > Domestic animals > Dog > Bark, Cat; Vehicle > Car;
# "Hiss" listed under Cat and under Onomatopoeia (a hiss is not always a cat); "Male speech" under Speech.
FIXTURE = [
    {"id": "/m/a", "name": "Animal", "description": "All sound-producing animals.", "child_ids": ["/m/dom"]},
    {"id": "/m/dom", "name": "Domestic animals, pets", "description": "Animals kept at home.",
     "child_ids": ["/m/dog", "/m/cat"]},
    {"id": "/m/dog", "name": "Dog", "description": "Sounds of a dog.", "child_ids": ["/m/bark"]},
    {"id": "/m/bark", "name": "Bark", "description": "The loud sharp cry of a dog.", "child_ids": []},
    {"id": "/m/cat", "name": "Cat", "description": "Sounds of a cat.", "child_ids": ["/m/hiss"]},
    {"id": "/m/ono", "name": "Onomatopoeia", "description": "Sounds named by imitation.", "child_ids": ["/m/hiss"]},
    {"id": "/m/hiss", "name": "Hiss", "description": "A sharp sibilant sound.", "child_ids": []},
    {"id": "/m/veh", "name": "Vehicle", "description": "Motor vehicles.", "child_ids": ["/m/car"]},
    {"id": "/m/car", "name": "Car", "description": "A passenger automobile.", "child_ids": []},
    {"id": "/m/sp", "name": "Speech", "description": "Talking.", "child_ids": ["/m/male"]},
    {"id": "/m/male", "name": "Male speech, man speaking", "description": "Speech by an adult man.", "child_ids": []},
]


class BagOfWords:
    """A deterministic stand-in for MiniLM: texts -> L2-normalised hashed word counts (same words, cosine 1)."""

    name = "bag-of-words-test"
    dim = 256

    def encode(self, texts):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in re.findall(r"[a-z]+", t.lower()):
                out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % self.dim] += 1
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out


@pytest.fixture()
def fixture_vocabulary(tmp_path):
    path = tmp_path / "vocabulary.json"
    path.write_text(json.dumps(audioset.build_vocabulary(FIXTURE, class_map=None)))
    return load_vocabulary(path)


def test_build_vocabulary_keys_synonyms_parents_and_mids(fixture_vocabulary):
    v = fixture_vocabulary
    assert set(v.classes) == {n["name"] for n in FIXTURE}
    assert v.get("Domestic animals, pets").synonyms == ("Domestic animals", "pets")
    assert v.parents["Bark"] == ("Dog",) and set(v.parents["Hiss"]) == {"Cat", "Onomatopoeia"}
    assert "Animal" not in v.parents
    assert v.resolve("/m/bark") == "Bark" and v.resolve("Bark") == "Bark" and v.resolve("/m/none") is None
    assert audioset.name_synonyms("Fire engine, fire truck (siren)") == ["Fire engine", "fire truck (siren)", "fire truck"]
    assert audioset.name_synonyms("Roaring cats (lions, tigers)") == ["Roaring cats"]


def test_dominators_follow_every_parent():
    parents = {"Bark": ("Dog",), "Dog": ("Domestic",), "Domestic": ("Animal",), "Cat": ("Domestic",),
               "Hiss": ("Cat", "Onomatopoeia")}
    dom = dominators(parents)
    assert dom("Bark") == {"Bark", "Dog", "Domestic", "Animal"}
    assert dom("Hiss") == {"Hiss"}  # under Cat on one path only: Cat does not dominate it
    assert dominators({"a": ("b",), "b": ("a",)})("a") >= {"a"}  # a cycle does not hang


def test_concept_members_down_and_up(fixture_vocabulary):
    labels = ["Dog", "Bark", "Cat", "Hiss", "Car", "Speech"]
    concepts = labels + ["Animal", "Domestic animals, pets", "Vehicle", "Male speech, man speaking", "Onomatopoeia"]
    m = concept_members(concepts, labels, fixture_vocabulary.parents)
    cover = {c: {labels[j] for j in np.flatnonzero(m[i])} for i, c in enumerate(concepts)}
    assert cover["Animal"] == {"Dog", "Bark", "Cat"}  # down: everything it dominates, not Hiss
    # a concept the model has as a label is that label (the model was trained on exactly it)...
    assert cover["Dog"] == {"Dog"} and cover["Cat"] == {"Cat"} and cover["Hiss"] == {"Hiss"}
    # ...unless asked to spread from labels too
    spread = concept_members(["Dog", "Cat"], labels, fixture_vocabulary.parents, labels_stand_alone=False)
    assert {labels[j] for j in np.flatnonzero(spread[0])} == {"Dog", "Bark"}
    assert {labels[j] for j in np.flatnonzero(spread[1])} == {"Cat"}
    assert cover["Vehicle"] == {"Car"}
    assert cover["Male speech, man speaking"] == {"Speech"}  # up: the model's broader class contains it
    assert cover["Onomatopoeia"] == set()  # Hiss is not only onomatopoeia either: nothing, so left out


def test_a_query_for_the_parent_ranks_the_childrens_segments(fixture_vocabulary, tmp_path):
    labels = ["Bark", "Cat", "Car", "Hiss"]  # a model that knows only leaves
    space = ConceptSpace(labels, fixture_vocabulary, encoder=BagOfWords(), cache_dir=tmp_path)
    assert "Animal" in space.concepts and "Vehicle" in space.concepts
    # segments: 0 bark, 1 cat, 2 car, 3 hiss (steam), 4 quiet bark
    probs = np.array([[0.9, 0.0, 0.05, 0.0], [0.0, 0.8, 0.1, 0.1], [0.0, 0.05, 0.9, 0.0], [0.0, 0.1, 0.0, 0.9],
                      [0.4, 0.0, 0.0, 0.0]], dtype=np.float32)
    sims, matched = space.query(["animal"])
    w = linguistic.label_weights(sims[0])
    assert space.concepts[int(w.argmax())] == "Animal"
    rows, scores = linguistic.top_segments(w, probs, 5, members=space.members)
    assert rows.tolist()[:3] == [0, 1, 4]  # bark, cat, quiet bark: the animal's children, by probability
    assert 2 not in rows.tolist()[:3] and 3 not in rows.tolist()[:3]
    why = linguistic.explain("animal", sims[0], matched[0], probs[0], labels, space.label_names,
                             members=space.members, concept_names=space.names)
    assert why.startswith("matches 'Animal'") and "'Bark'" in why
    # a plain label space (no hierarchy) knows no animal: the parent's query finds nothing specific
    flat = ConceptSpace(labels, fixture_vocabulary, encoder=BagOfWords(), cache_dir=tmp_path, hierarchy=False)
    assert flat.concepts == labels and flat.members.sum() == len(labels)
    s2, _ = flat.query(["vehicle"])
    assert float(s2.max()) < 0.5


def test_concepts_covering_the_same_labels_are_one_group(fixture_vocabulary, tmp_path):
    labels = ["Bark", "Cat", "Car", "Hiss"]
    space = ConceptSpace(labels, fixture_vocabulary, encoder=BagOfWords(), cache_dir=tmp_path)
    groups = {tuple(g) for g in space.group_concepts}
    assert ("Bark", "Dog") in groups and ("Car", "Vehicle") in groups  # Dog and Vehicle cover one label each
    assert ("Animal", "Domestic animals, pets") in groups
    assert space.members.shape == (len(space.groups), 4) and len({r.tobytes() for r in space.members}) == len(space.groups)
    sims, matched = space.query(["vehicle"])
    g = int(sims[0].argmax())
    assert space.group_concepts[g] == ["Car", "Vehicle"] and matched[0][g] == "Vehicle"
    rows, _ = linguistic.top_segments(linguistic.label_weights(sims[0]), np.eye(4, dtype=np.float32), 4,
                                      members=space.members)
    assert rows[0] == 2  # the car segment


def test_prefer_specific_gives_a_broader_concept_no_weight_when_a_narrower_one_matches_as_well():
    from nels.encoders.concepts import narrower_than, prefer_specific

    # groups: 0 {breathing}, 1 {breathing, snoring} ("Breathing"), 2 {snoring}, 3 {dog, cat} ("Animal")
    members = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1]], dtype=bool)
    nar = narrower_than(members)
    assert nar[0, 1] and nar[2, 1] and not nar[1, 0] and not nar[0, 3] and not nar[0, 0]
    s = prefer_specific(np.array([1.0, 1.0, 0.2, 0.1], np.float32), nar)
    assert s[1] == -np.inf and s[0] == 1.0 and s[2] == np.float32(0.2)
    w = linguistic.label_weights(s)
    assert w[1] == 0 and w[0] > 0.99
    s = prefer_specific(np.array([[0.5, 0.9, 0.4, 0.1]], np.float32), nar)  # the broad word wins: kept
    assert np.isfinite(s).all()


def test_concept_scoring_matches_brute_force():
    rng = np.random.default_rng(0)
    probs = rng.random((3000, 12)).astype(np.float32) ** 3
    members = rng.random((20, 12)) < 0.2
    members[np.arange(12), np.arange(12)] = True
    order = linguistic.label_order(probs, depth=600)
    for trial in range(30):
        sims = rng.random(20).astype(np.float32)
        w = linguistic.label_weights(sims, top=int(rng.integers(1, 5)))
        full = linguistic.score(w, probs, members)
        brute = sum(w[c] * probs[:, members[c]].max(axis=1) for c in range(20) if w[c] > 0)
        np.testing.assert_allclose(full, brute, rtol=1e-5, atol=1e-6)
        for n in (1, 10, 100):
            rows, scores = linguistic.top_segments(w, probs, n, order=order, members=members)
            best = np.sort(full)[::-1][:n]
            np.testing.assert_allclose(scores, best[best > 0], rtol=1e-5, atol=1e-6)
    # identity members are the plain weights @ probs
    w = linguistic.label_weights(rng.random(12).astype(np.float32))
    np.testing.assert_allclose(linguistic.score(w, probs, np.eye(12, dtype=bool)), linguistic.score(w, probs),
                               rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ the shipped vocabulary


def test_shipped_audioset_vocabulary_is_keyed_by_yamnet_labels():
    v = audioset.load_audioset_vocabulary()
    assert len(v.classes) == 632
    cmap = audioset.read_class_map()
    assert len(cmap) == 521 and set(cmap.values()) <= set(v.classes)
    assert all(v.mids[label] == mid for mid, label in cmap.items())
    assert v.resolve("/m/0bt9lr") == "Dog" and "Domestic animals, pets" in v.parents["Dog"]
    raw = json.loads(audioset.AUDIOSET_VOCABULARY.read_text())
    assert "CC BY-SA 4.0" in raw["licence"] and "d417d32" in raw["source"]
    assert (audioset.AUDIOSET_VOCABULARY.parent / "LICENSE.md").exists()


def test_esc50_links_name_existing_audioset_classes():
    v = audioset.load_audioset_vocabulary()
    links = audioset.load_links()
    assert set(links) == set(load_vocabulary().classes)  # every ESC-50 class is listed (some with no link)
    for esc, targets in links.items():
        for t in targets:
            assert v.resolve(t), (esc, t)


def test_search_vocabulary_for_the_cnn_and_for_yamnet():
    from nels.encoders.concepts import search_vocabulary
    from nels.search.query import model_vocabulary

    class Yamnetish:
        labels = list(audioset.read_class_map().values())

    assert model_vocabulary(Yamnetish()) == str(audioset.AUDIOSET_VOCABULARY)
    v = search_vocabulary(model_vocabulary(Yamnetish()))
    m = concept_members(["Animal", "dog", "Male speech, man speaking"], Yamnetish.labels, v.parents)
    assert {Yamnetish.labels[j] for j in np.flatnonzero(m[0])} == {"Animal"}  # YAMNet has the class itself
    spread = concept_members(["Animal"], Yamnetish.labels, v.parents, labels_stand_alone=False)
    animal = {Yamnetish.labels[j] for j in np.flatnonzero(spread[0])}
    assert {"Animal", "Dog", "Bark", "Cat", "Cattle, bovinae", "Bird"} <= animal and "Hiss" not in animal
    assert {Yamnetish.labels[j] for j in np.flatnonzero(m[1])} == {"Dog", "Bark"}
    assert {Yamnetish.labels[j] for j in np.flatnonzero(m[2])} == {"Speech"}
    esc = list(load_vocabulary().classes)
    v = search_vocabulary(None)
    m = concept_members(["Animal", "Vehicle"], esc, v.parents)
    assert {esc[j] for j in np.flatnonzero(m[0])} >= {"dog", "cat", "cow", "rooster", "crow", "frog"}
    assert {esc[j] for j in np.flatnonzero(m[1])} >= {"helicopter", "train", "airplane"}


@pytest.mark.skipif(not ONTOLOGY.exists(), reason="needs ../shared/datasets/audioset-ontology")
def test_shipped_file_is_the_generators_output():
    fresh = audioset.build_vocabulary(ONTOLOGY)
    shipped = json.loads(audioset.AUDIOSET_VOCABULARY.read_text())
    assert fresh == shipped
