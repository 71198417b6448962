"""How well a library's vocabulary covers a query: a calibrated probability, and a notice when it does not.

Text. For each classifier of the library, two similarities of the query (all-MiniLM-L6-v2 cosines, as in
linguistic search): `covered`, its best similarity to a concept that stands for some class of the model
(`ConceptSpace`: the model's labels, and the AudioSet/ESC-50 classes above or below them), and `known`,
its best similarity to any sound concept of the search vocabulary (the 632 AudioSet classes, the ESC-50
classes, the model's own), whether or not the model has a class for it. "guitar" is close to AudioSet's
"Guitar" (known 1.0) but only to "keyboard typing" among the ESC-50 CNN's classes (covered 0.4): a sound
the model was never taught. "asdfgh qwerty" is close to nothing at all (known low). With YAMNet in the
library, "Guitar" is one of its classes, so the same query is covered: the signal depends on the models.
A logistic model of (covered, known - covered), fitted by `bench/fit_calibration.py` on validation
queries (ESC-50 and AudioSet class names and training phrasings vs AudioSet classes the model lacks and
generated gibberish; never fold 1's paraphrases, never realworld-dev), turns them into P(covered); the
library covers a query when any of its classifiers does. Below the threshold chosen there, search says
"NELS has no class for 'guitar'; closest: ..." and logs the query (`Catalogue.log_weak_query`).

Audio. A query sound is explained when a classifier puts enough probability on one class: its largest class
probability above chance ((p - 1/C) / (1 - 1/C)), through a logistic model fitted on ESC-50 fold-2 clips (a CNN
that never saw them) vs synthesised sounds no ESC-50 class describes. A weak signal (a CNN is sure of many
sounds it was never taught: 74 % of the synthetic sounds pass) but it flags only 2 % of real ESC-50 clips.
Only for softmax classifiers: YAMNet has classes for synthetic sounds (sine waves, noise) and its fit came
out reversed, so its queries are never flagged (calibration.json says why).

The fitted numbers live in `nels/data/calibration.json` (with how they were fitted and measured).
"""
from __future__ import annotations

import functools
import json
import math
import threading
from pathlib import Path

import numpy as np

CALIBRATION = Path(__file__).resolve().parent.parent / "data" / "calibration.json"
NAMED_SIMILARITY = 0.6  # a notice names the vocabulary concept the query matches only from this similarity
_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def calibration() -> dict:
    """The shipped fitted numbers (nels/data/calibration.json); {} when the file is missing."""
    try:
        return json.loads(CALIBRATION.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))


# -- text ---------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _known_space(vocabulary: str | None):
    """A LabelSpace over every entry of the search vocabulary (what `known` compares the query with), by
    names and synonyms only: the 632 AudioSet descriptions would cost a minute of MiniLM on first use, and
    a sound the models lack is recognised by its name."""
    from dataclasses import replace

    from nels.encoders.concepts import search_vocabulary
    from nels.encoders.text import LabelSpace

    v = search_vocabulary(vocabulary)
    v = replace(v, classes={k: replace(c, description="") for k, c in v.classes.items()})
    return LabelSpace(list(v.classes), v)


def known_space(vocabulary: str | None):
    with _lock:
        return _known_space(vocabulary)


def text_features(covered: float, known: float) -> list[float]:
    """The coverage model's inputs: the best covered similarity, and how much better the query matches a
    sound concept the model has no class for (0 when none)."""
    return [float(covered), max(0.0, float(known) - float(covered))]


def text_coverage_probability(covered: float, known: float, params: dict | None = None) -> float:
    """P(the model's classes cover the query) from its two similarities (see the module docstring)."""
    p = params if params is not None else (calibration().get("text_coverage") or {})
    w = p.get("weights") or [12.0, -12.0]  # unfitted fallback: similarity 0.5 is the edge, a better
    b = p.get("bias", -6.0)  # match elsewhere in the vocabulary counts against
    x = text_features(covered, known)
    return sigmoid(b + sum(wi * xi for wi, xi in zip(w, x)))


def text_threshold(params: dict | None = None) -> float:
    p = params if params is not None else (calibration().get("text_coverage") or {})
    return float(p.get("threshold", 0.5))


def text_coverage(text: str, per_model: list[dict]) -> dict:
    """The library's coverage of a text query.

    per_model : one dict per classifier: {"model", "covered" (best similarity to a concept covering its
        classes), "known" (best similarity to any vocabulary concept), "closest" [(name, similarity)],
        "nearest_known" (name of the best vocabulary concept)}.
    Returns {"score" (P(covered), the best model's), "covered" (score >= threshold), "threshold",
    "best_similarity", "model", "closest": [{"label", "similarity"}], "nearest_concept", "models":
    {model: score}}.
    """
    thr = text_threshold()
    scores = {m["model"]: text_coverage_probability(m["covered"], m["known"]) for m in per_model}
    best = max(per_model, key=lambda m: (scores[m["model"]], m["covered"]))
    score = scores[best["model"]]
    return {"kind": "text", "score": round(score, 4), "covered": bool(score >= thr), "threshold": round(thr, 4),
            "best_similarity": round(float(best["covered"]), 4), "model": best["model"],
            "closest": [{"label": n, "similarity": round(float(s), 4)} for n, s in best["closest"]],
            "nearest_concept": best.get("nearest_known"),
            "nearest_concept_similarity": round(float(best["known"]), 4),
            "models": {k: round(v, 4) for k, v in scores.items()}}


def text_notice(text: str, cov: dict) -> str:
    closest = ", ".join(f"{c['label']} ({c['similarity']:.2f})" for c in cov["closest"][:3])
    out = f"NELS has no class for {text!r}; closest: {closest or 'none'}"
    nearest = cov.get("nearest_concept")
    # name the sound the query means when it clearly means one (MiniLM puts a query near its own label at
    # 0.5-0.8, see nels.search.linguistic): "gunshot" is AudioSet's "Gunshot, gunfire"; gibberish means none
    if nearest and cov.get("nearest_concept_similarity", 0.0) >= NAMED_SIMILARITY \
            and nearest.lower() not in {c["label"].lower() for c in cov["closest"]}:
        out += f" (it matches the AudioSet class {nearest!r}, which no model here was taught)"
    return out


def model_text_features(space, sims_row: np.ndarray, known_sims_row: np.ndarray, known_labels) -> dict:
    """The per-model inputs of `text_coverage` from one query's ConceptSpace similarities (`sims_row`, per
    group) and its similarities to every vocabulary entry (`known_sims_row`, `known_labels`)."""
    s = np.asarray(sims_row, dtype=np.float32)
    order = [int(i) for i in np.argsort(-np.where(np.isfinite(s), s, -9.0))[:3]]
    k = int(np.argmax(known_sims_row))
    return {"covered": float(np.nanmax(np.where(np.isfinite(s), s, -1.0))), "known": float(known_sims_row[k]),
            "closest": [(space.names[i], float(s[i])) for i in order if np.isfinite(s[i])],
            "nearest_known": known_labels[k]}


# -- audio --------------------------------------------------------------------------------------------------
def audio_kind(labels) -> str:
    """Which fitted audio model applies to a classifier: 'yamnet' for AudioSet's classes (sigmoid scores),
    else 'softmax' (the CNN, heads: probabilities that sum to 1)."""
    from nels.encoders.audioset import load_audioset_vocabulary

    labels = list(labels or [])
    known = load_audioset_vocabulary().classes
    return "yamnet" if labels and sum(l in known for l in labels) >= 0.9 * len(labels) else "softmax"


def audio_coverage(query_probs: list[tuple[str, list[str], np.ndarray]]) -> dict | None:
    """Whether some class explains a query sound.

    query_probs : per classifier (model name, labels, the query's mean class probabilities).
    Returns {"kind": "audio", "score", "covered", "threshold", "model", "closest": [{"label", "prob"}],
    "models"} or None without classifiers. P(explained) of a classifier is a logistic function of its
    largest class probability, fitted per kind (`audio_kind`); the library explains the sound when any does.
    """
    if not query_probs:
        return None
    cal = calibration().get("audio_coverage") or {}
    scores, best = {}, None
    for model, labels, probs in query_probs:
        p = cal.get(audio_kind(labels))
        top = float(np.max(probs))
        if p is None:  # no fit for this kind of classifier (YAMNet: see calibration.json): never flagged
            scores[model] = (1.0, 0.0, False)
        else:
            c = len(labels)
            above = (top - 1.0 / c) / (1.0 - 1.0 / c) if c > 1 else top  # above chance, so C does not matter
            scores[model] = (sigmoid(p["bias"] + p["weights"][0] * above), float(p.get("threshold", 0.5)), True)
        if best is None or scores[model][0] - scores[model][1] > scores[best[0]][0] - scores[best[0]][1]:
            best = (model, labels, probs)
    model, labels, probs = best
    score, thr, fitted = scores[model]
    order = np.argsort(-np.asarray(probs))[:3]
    return {"kind": "audio", "score": round(score, 4), "covered": bool(score >= thr), "threshold": round(thr, 4),
            "fitted": fitted, "model": model,
            "closest": [{"label": labels[i], "prob": round(float(probs[i]), 4)} for i in order],
            "models": {m: round(s, 4) for m, (s, _, _) in scores.items()}}


def audio_notice(cov: dict) -> str:
    near = ", ".join(f"{c['label']} ({c['prob']:.2f})" for c in cov["closest"][:3])
    return (f"no class of this library explains this sound (its best guesses are weak: {near}); "
            "the results are the sounds nearest to it")
