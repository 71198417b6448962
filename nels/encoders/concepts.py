"""Hierarchy-aware label spaces: a text query is compared with *concepts* (every entry of a vocabulary: a
model's own labels, the AudioSet classes, the ESC-50 classes), and each concept stands for the model labels it
covers, so that "animal" finds a model's dogs and cows, and "man speaking" a model that only knows "Speech".

    space = ConceptSpace(labels, search_vocabulary(model_vocabulary_path))
    sims, matched = space.query(["animal"])        # (1, n_concepts), the phrase that matched per concept
    space.members                                  # (n_concepts, n_labels) bool: what each concept covers

The search side (`nels.search.linguistic`) turns the similarities into concept weights and scores a segment by
`sum_c w_c * max(p_l for l in members[c])`: a concept is present as much as its most probable member.

Members (`concept_members`, a plain function of the hierarchy):

* **Down.** Concept c covers the model labels that are c or lie under c. A label lies under c when c
  *dominates* it: every chain of parents from the label up to a root passes through c. So "Bark" (parent Dog)
  lies under Dog, Domestic animals and Animal, while "Hiss", which the ontology lists under Cat, Snake, Steam
  and Onomatopoeia, lies under none of those (a hiss is not evidence of a cat), only under what they all
  share. A query for a parent thereby reaches its children's segments without borrowing from sounds that are
  only sometimes its kind.
* **Up.** A concept that covers no model label (a class narrower than anything the model knows: "Male speech,
  man speaking" or "Crash cymbal" for YAMNet, the ESC-50 class "dog" for YAMNet) stands for its nearest
  ancestors that are model labels ("Speech", "Cymbal", "Dog" and "Bark"): the model's broader class contains
  it. The climb stops at an ancestor that covers other labels without being one (those are the concept's
  siblings, not the concept: "Speech" does not stand for the CNN's "laughing" through "Human voice").
* A concept that covers nothing either way is left out of the space (no query weight is spent on it).

Nothing here is fitted: the hierarchy is the ontology's (plus hand-written ESC-50 links), and the scoring
keeps `label_weights`' defaults.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from nels.encoders.text import LabelSpace, TextEncoder, Vocabulary, load_vocabulary


def dominators(parents: dict[str, Sequence[str]]):
    """A function label -> frozenset of the entries that dominate it (itself included): dom(x) = {x} | the
    intersection of dom(p) over x's parents p. Parents missing from `parents` are roots; cycles are cut."""
    memo: dict[str, frozenset] = {}

    def dom(x: str, visiting: frozenset = frozenset()) -> frozenset:
        if x in memo:
            return memo[x]
        ps = [p for p in parents.get(x, ()) if p != x and p not in visiting]
        common: frozenset | None = None
        for p in ps:
            d = dom(p, visiting | {x})
            common = d if common is None else common & d
        out = frozenset({x}) | (common or frozenset())
        if not visiting:
            memo[x] = out
        return out

    return dom


def concept_members(concepts: Sequence[str], labels: Sequence[str], parents: dict[str, Sequence[str]],
                    labels_stand_alone: bool = True) -> np.ndarray:
    """(n_concepts, n_labels) bool: which model labels each concept covers (see the module docstring).

    concepts : vocabulary entries (labels among them are their own members).
    labels : the model's labels, index-aligned with its class probabilities.
    parents : entry -> its parents (the vocabulary's hierarchy).
    labels_stand_alone : a concept that is one of the model's labels covers that label only (the model was
        trained on exactly that class); False: it also covers the labels under it.
    """
    dom = dominators(parents)
    label_idx = {l: i for i, l in enumerate(labels)}
    down: dict[str, set[int]] = {}
    for l, i in label_idx.items():
        for a in dom(l):
            down.setdefault(a, set()).add(i)

    def up(c: str) -> set[int]:
        out: set[int] = set()
        seen = {c}
        frontier = [p for p in parents.get(c, ())]
        while frontier:
            nxt = []
            for p in frontier:
                if p in seen:
                    continue
                seen.add(p)
                if p in label_idx:
                    out.add(label_idx[p])
                elif not down.get(p):  # an ancestor that covers other labels (c's siblings) ends the climb
                    nxt.extend(parents.get(p, ()))
            frontier = nxt
        return out

    m = np.zeros((len(concepts), len(labels)), dtype=bool)
    for ci, c in enumerate(concepts):
        cover = {label_idx[c]} if (labels_stand_alone and c in label_idx) else (down.get(c) or up(c))
        if cover:
            m[ci, sorted(cover)] = True
    return m


def search_vocabulary(model_vocabulary: str | os.PathLike | None = None) -> Vocabulary:
    """What linguistic search compares queries with: the model's vocabulary (None: the shipped ESC-50 one),
    the AudioSet classes and the ESC-50 classes, with the AudioSet hierarchy and the ESC-50 -> AudioSet links."""
    from nels.encoders.audioset import load_audioset_vocabulary, load_links, union_vocabulary

    own = load_vocabulary(model_vocabulary) if model_vocabulary else load_vocabulary()
    return union_vocabulary([own, load_audioset_vocabulary(), load_vocabulary()], links=load_links())


class ConceptSpace:
    """A `LabelSpace` over concepts, with what each concept covers of a model's labels.

    labels : the model's labels (index-aligned with its probabilities); each is a concept.
    vocabulary : phrases and hierarchy (`search_vocabulary`); a label without an entry uses its name.
    hierarchy : False gives the plain label space (concepts = labels, members = identity).
    Attributes: labels, concepts, names (display name per concept), label_names, members
    (n_concepts, n_labels) bool, space (the LabelSpace over the concepts).
    """

    def __init__(self, labels: Sequence[str], vocabulary: Vocabulary | None = None, encoder: TextEncoder | None = None,
                 cache_dir: str | os.PathLike | None = None, hierarchy: bool = True, labels_stand_alone: bool = True):
        self.labels = list(labels)
        vocabulary = vocabulary if vocabulary is not None else search_vocabulary()
        self.vocabulary = vocabulary
        if hierarchy:
            others = [c for c in vocabulary.classes if c not in set(self.labels)]
            members = concept_members(self.labels + others, self.labels, vocabulary.parents, labels_stand_alone)
            keep = np.ones(len(self.labels) + len(others), dtype=bool)
            keep[len(self.labels):] = members[len(self.labels):].any(axis=1)
            self.concepts = [c for c, k in zip(self.labels + others, keep) if k]
            self.members = members[keep]
        else:
            self.concepts = list(self.labels)
            self.members = np.eye(len(self.labels), dtype=bool)
        self.space = LabelSpace(self.concepts, vocabulary, encoder, cache_dir)
        self.names = self.space.names
        self.label_names = self.names[: len(self.labels)]
        self.encoder = self.space.encoder

    def similarity(self, query_vecs: np.ndarray) -> tuple[np.ndarray, list[list[str]]]:
        """LabelSpace.similarity over the concepts: sims (n_queries, n_concepts) and matched phrases."""
        return self.space.similarity(query_vecs)

    def query(self, texts: Sequence[str]) -> tuple[np.ndarray, list[list[str]]]:
        return self.space.similarity(self.encoder.encode(texts))
