"""One relevance a person can read: P(a result is relevant to the query), in [0, 1], from its per-mode scores.

Every mode scores on its own scale (linguistic: the probability mass a classifier puts on the query's
labels; acoustic and joint: cosines; fused: a reciprocal-rank sum of ~0.03 that says nothing about a
single result). A logistic model per set of modes that answered the query maps a result's per-mode scores to
the probability that a person would call it relevant; it was fitted by `bench/fit_calibration.py relevance`
on ESC-50 validation queries (a library of fold 2 indexed by a CNN that never saw fold 2, and YAMNet;
relevant = same ESC-50 class) and its reliability measured on fold 1 (never fitted on; nels/data/
calibration.json has the figures). A result that a mode did not return gets that mode's last listed score
(the best it could have had; 0 when the list was not full).

Features (`feature_name`): "<mode>:<kind>", mode in linguistic, acoustic, joint_text, joint_audio; kind the
classifier or space kind ("softmax" for a classifier whose probabilities sum to 1, "yamnet" for AudioSet
sigmoid scores; the vector space's name for acoustic). A set of features without a fitted model falls back to
the per-feature models of those fitted (the most confident one speaks), then to the plain score clipped to
[0, 1] (said in `Results.calibration`).

Several classifiers answering one text query (the own CNN and YAMNet): each one's P(covered) of the query
(`nels.search.coverage`) weights its say, `covered_relevance`, so a classifier without a class for the query
cannot lift its nearest wrong class (the exponent `coverage_gamma` chosen by bench/fit_fusion_coverage.py).
"""
from __future__ import annotations

import math

import numpy as np

from nels.search.coverage import audio_kind, calibration

EPS = 1e-4


def transform(mode: str, score: float) -> float:
    """A score on the scale the model is linear in: the logit of a linguistic probability mass, a cosine as is."""
    if mode == "linguistic":
        p = min(1 - EPS, max(EPS, float(score)))
        return math.log(p / (1 - p))
    return float(score)


def feature_name(mode: str, kind: str) -> str:
    return f"{mode}:{kind}"


def classifier_kind(labels) -> str:
    return audio_kind(labels)


def config_key(features) -> str:
    return "+".join(sorted(features))


def relevance_model(features) -> tuple[dict | None, str]:
    """The fitted model for this set of features, and how it was found ("fitted", "per-mode", "default")."""
    cal = calibration().get("relevance") or {}
    models = cal.get("models") or {}
    m = models.get(config_key(features))
    if m is not None:
        return m, "fitted"
    single = cal.get("single") or {}
    known = [f for f in features if f in single]
    if known:  # the modes fitted one at a time (a mode never fitted, e.g. another model's space, is left out)
        return {"per_feature": {f: single[f] for f in known}}, "per-mode"
    return None, "default"


def relevance(values: dict[str, float], model: dict | None) -> float:
    """P(relevant) of one result: values = {feature: raw score} (every feature of the set); see `relevance_rows`."""
    feats = list(values)
    return float(relevance_rows(np.array([[values[f] for f in feats]], dtype=np.float64), feats, model)[0])


def coverage_gamma() -> float | None:
    """The exponent on P(covered) in `covered_relevance` (chosen on validation by bench/fit_fusion_coverage.py;
    None when not fitted: classifiers are then fused as if each covered the query)."""
    g = (calibration().get("relevance") or {}).get("coverage_gamma")
    return float(g) if g is not None else None


def covered_relevance(values: dict[str, float], covers: dict[str, float], gamma: float = 1.0) -> float:
    """P(relevant) of a result that several classifiers scored, each weighted by how well it covers the query.

    values : {feature: raw score} (every feature of the query's set).
    covers : {feature: P(the classifier behind that feature covers the query)} for the classifiers' features
        (`nels.search.coverage.text_coverage`'s per-model scores); features not in `covers` (a joint space, an
        acoustic space) are in every term.
    gamma : q = P(covered) ** gamma; > 1 trusts a classifier only where coverage is clearly high.
    Mixture over which classifiers cover the query: sum over non-empty sets S of the classifiers of
    prod_{f in S} q_f prod_{f not in S} (1 - q_f) * relevance(values of S and the other features, model(S)),
    normalised over the non-empty sets. "guitar" on a library of the ESC-50 CNN and YAMNet: the CNN's
    P(covered) is ~0, so the result's relevance is YAMNet's model alone, whatever mass the CNN put on its
    nearest wrong class; "dog barking" (both cover it): the two-classifier model.
    """
    return mixture_relevance(values, coverage_terms(list(values), covers, gamma))


def coverage_terms(features, covers: dict[str, float], gamma: float) -> list[tuple[float, dict | None, list[str]]]:
    """The terms of `covered_relevance` for a set of features: [(weight, relevance model, its features)] per
    set of covering classifiers, the weights summing to 1. They depend on the query, not on the result: `attach`
    computes them once per query."""
    from itertools import combinations

    cov = [f for f in features if f in covers]
    rest = [f for f in features if f not in covers]
    q = {f: min(1.0, max(0.0, float(covers[f]))) ** gamma for f in cov}
    terms = []
    for r in range(1, len(cov) + 1):
        for subset in combinations(cov, r):
            pi = math.prod(q[f] if f in subset else 1.0 - q[f] for f in cov)
            if pi > 0:
                terms.append((pi, relevance_model(list(subset) + rest)[0], list(subset) + rest))
    total = sum(t[0] for t in terms)
    if total <= 0:  # no classifier covers it at all: every classifier's view, as without coverage
        return [(1.0, relevance_model(list(features))[0], list(features))]
    return [(pi / total, m, fs) for pi, m, fs in terms]


def mixture_relevance(values: dict[str, float], terms) -> float:
    """P(relevant) of one result from its raw scores and a query's `coverage_terms`."""
    return sum(pi * relevance({f: values[f] for f in fs}, m) for pi, m, fs in terms)


def audio_fusion_terms(features, explained: dict[str, float]) -> list[tuple[float, dict | None, list[str]]] | None:
    """The fitted fusion of an audio query's modes when they are `audio_fusion`'s (calibration.json, chosen by
    bench/fit_audio_fusion.py on classes the CNN never learned), as `coverage_terms`-like terms; None otherwise.

    explained : {classifier kind (`classifier_kind`): P(a classifier of that kind explains the query sound)}
        (`nels.search.coverage.audio_coverage`'s per-model scores); the gate is `audio_fusion["gate_kind"]`'s
        (the own CNN's "softmax"); a library without such a classifier gets no terms.
    Rule "mixture": q = gate ** gamma; q x the model fitted on sounds that classifier learned + (1 - q) x the one
    fitted on sounds it never learned (which leans on YAMNet's space). Rule "one": a single model.
    """
    fusion = (calibration().get("relevance") or {}).get("audio_fusion")
    if not fusion or sorted(features) != sorted(fusion["features"]):
        return None
    feats = sorted(features)
    if fusion.get("rule") == "mixture":
        gate = explained.get(fusion.get("gate_kind"))
        if gate is None:
            return None
        q = min(1.0, max(0.0, float(gate))) ** float(fusion["gamma"])
        return [(q, fusion["covered"], feats), (1.0 - q, fusion["not_covered"], feats)]
    return [(1.0, fusion["model"], feats)]


def fuse_by_relevance(kind: str) -> bool:
    """Whether fused rankings of `kind` ("text", "audio") are ordered by the fitted relevance rather than by
    reciprocal rank: chosen on validation by bench/fit_calibration.py (fusion_on_validation in the data file)."""
    return bool(((calibration().get("relevance") or {}).get("fuse_by_relevance") or {}).get(kind))


def fill_values(lists: dict[str, list], n: int) -> dict[str, float]:
    """Per feature, the score a result gets when that mode did not return it: the list's last score when the
    list was cut at `n` (the result scored at most that), else 0 (the mode gave it nothing)."""
    return {f: (float(c[-1].score) if c and len(c) >= n else 0.0) for f, c in lists.items()}


def attach(cands, part_features: dict[str, str], fills: dict[str, float],
           covers: dict[str, float] | None = None, terms: list | None = None) -> str:
    """Set `c.relevance` on every candidate from its parts (`c.parts`: part key -> raw score).

    part_features : part key -> feature name (several keys may share a feature: the best score counts).
    fills : per feature, the score of a result that mode did not return (`fill_values`).
    covers : {feature: P(covered)} of the classifiers behind two or more features, with a fitted
        `coverage_gamma`: relevance is `covered_relevance` (a classifier that does not cover the query
        does not speak); else the one model of the whole set.
    terms : the query's terms when the caller has them (`audio_fusion_terms`): relevance is their mixture.
    Returns how the model was found (see `relevance_model`; "fitted" with `terms`).
    """
    feats = sorted(set(part_features.values()))
    model, how = relevance_model(feats)
    if terms is not None:
        how = "fitted"
    else:
        gamma = coverage_gamma() if covers and len([f for f in feats if f in covers]) > 1 and how == "fitted" else None
        terms = coverage_terms(feats, covers, gamma) if gamma is not None else [(1.0, model, feats)]
    col = {f: i for i, f in enumerate(feats)}
    key_col = {key: col[f] for key, f in part_features.items()}
    filled = [fills.get(f, 0.0) for f in feats]
    rows = []
    for c in cands:
        row = filled.copy()
        seen = 0  # bit j: column j has a part already (several parts of one feature: the best counts)
        for key, v in (c.parts or {}).items():
            j = key_col.get(key)
            if j is not None:
                row[j] = max(float(v), row[j]) if seen >> j & 1 else float(v)
                seen |= 1 << j
        c.values = dict(zip(feats, row))
        rows.append(row)
    if cands:  # one product per term over every candidate (a few ms at 400 results)
        V = np.array(rows, dtype=np.float64)
        rel = sum(pi * relevance_rows(V[:, [col[f] for f in fs]], fs, m) for pi, m, fs in terms)
        for c, r in zip(cands, rel.tolist()):
            c.relevance = r
    return how


def non_increasing(values) -> np.ndarray:
    """The non-increasing sequence closest (least squares) to `values`: pool adjacent violators, each pooled
    run taking its mean. Applied to the relevances of a ranking that is not ordered by them (the default
    fused text mode ranks by reciprocal rank over the linguistic mode and the joint space, whose part the
    relevance model does not have), so the number shown falls with the rank, and a run where the ranking and
    the class probabilities disagree shares their mean chance. ESC-50 fold 1, the demo library (CNN + YAMNet
    + joint space), 201 queries x 50 results: see bench/relevance_order_check.py and bench/RESULTS.md.
    A sequence already non-increasing is returned unchanged."""
    blocks: list[list[float]] = []  # [sum, count] of each pooled run
    for v in np.asarray(values, dtype=np.float64).tolist():
        blocks.append([v, 1.0])
        while len(blocks) > 1 and blocks[-2][0] * blocks[-1][1] < blocks[-1][0] * blocks[-2][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    if not blocks:
        return np.zeros(0)
    return np.concatenate([np.full(int(c), t / c) for t, c in blocks])


def relevance_rows(V: np.ndarray, feats: list[str], model: dict | None) -> np.ndarray:
    """P(relevant) of many results at once: V (n, len(feats)) raw scores, columns in the order of `feats`.
    Without a model (nothing fitted for these modes): the best score, clipped to [0, 1]; a per-feature model
    (modes fitted one at a time): the most confident mode speaks (a feature it names that is not in `feats`
    scores 0); else the logistic model over the transformed scores (`transform`)."""
    if model is None:
        return np.clip(V.max(axis=1), 0.0, 1.0) if V.shape[1] else np.zeros(len(V))
    X = np.empty_like(V)
    for j, f in enumerate(feats):
        if f.split(":")[0] == "linguistic":
            pj = np.clip(V[:, j], EPS, 1 - EPS)
            X[:, j] = np.log(pj / (1 - pj))
        else:
            X[:, j] = V[:, j]
    if "per_feature" in model:
        idx = {f: j for j, f in enumerate(feats)}
        zs = [p["bias"] + p["weight"] * (X[:, idx[f]] if f in idx else transform(f.split(":")[0], 0.0))
              for f, p in model["per_feature"].items()]
        return np.max([_sigmoid(z) for z in zs], axis=0)
    z = model["bias"] + sum(w * X[:, feats.index(f)] for f, w in model["weights"].items())
    return _sigmoid(z)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0)))
