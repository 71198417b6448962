"""How well a library's vocabulary covers a query: a calibrated probability, and a notice when it does not.

Text. For each classifier of the library, three similarities of the query (all-MiniLM-L6-v2 cosines, as in
linguistic search): `covered`, its best similarity to a concept that stands for some class of the model
(`ConceptSpace`: the model's labels, and the AudioSet/ESC-50 classes above or below them); `phrasing`, its
best similarity to a written phrasing of a class the model covers (the joint space's training phrasings,
nels/data/joint_phrases*.json: "the miaow of a house pet" is far from the name "cat" but near "a house cat
meowing"); and `known`, its best similarity to a sound concept of the search vocabulary (the 632 AudioSet
classes, the ESC-50 classes) that the model does *not* cover (`covered_concepts`: outside its concept space,
and not a kind of sound one of its classes is (Meow under the ESC-50 cat's Cat, Police car (siren) under
Siren)). "guitar" is close to AudioSet's "Guitar" (known 1.0) but only to "keyboard typing" among the ESC-50
CNN's classes (covered 0.4): a sound the model was never taught. "asdfgh qwerty" is close to nothing at all.
With YAMNet in the library, "Guitar" is one of its classes, so the same query is covered: the signal depends
on the models. A logistic model of (covered, known - covered, phrasing - covered), fitted by
`bench/fit_calibration.py` on validation queries (ESC-50 names and the training phrasings, each one left
out of the phrasing bank it is compared with, and AudioSet class names, vs AudioSet classes the model does
not cover, generated gibberish and words that name no sound; never fold 1's paraphrases, never
realworld-dev), turns them into P(covered); the library covers a query when any of its classifiers does.
Below the threshold chosen there, search says "NELS has no class for 'guitar' ...; closest: ..." and logs
the query (`Catalogue.log_weak_query`).

Audio. A query sound is explained when a classifier matches it strongly to one of its classes. For the shipped
CNN (the fit names its weights' checksum): a logistic model of the largest logit of the query's windows
(`embedding_signal`: the classifier layer on the un-normalised embedding; unlike the probabilities it keeps
how strongly the sound matches its best class), fitted by `bench/fit_calibration.py audio-embedding` on the
CNN's validation clips (recordings from its training folds that it never trained on) vs synthesised sounds
no ESC-50 class describes, at a threshold that flags at most 3 % of those clips; chosen by `audio-embedding-
study` on a CNN trained without fold 2 among the entropy, Mahalanobis distances to the class means (Lee et
al. 2018), their relative form (Ren et al. 2021), the energy, the embedding's norm and their pairs with the
entropy. Other softmax classifiers (a CNN trained here, heads): the normalised entropy of the class
probabilities (`normalised_entropy`), through a logistic model fitted on ESC-50 fold-2 clips (a CNN that never
saw them) vs synthesised sounds (`probs_explained`, also the audio-fusion gate). Both miss speech: the CNN
hears it as dog / laughing / coughing, in the range of its ESC-50 clips.
Only for softmax classifiers: YAMNet has classes for synthetic sounds (sine waves, noise) and its fit came
out reversed, so its queries are never flagged (calibration.json says why).

The fitted numbers live in `nels/data/calibration.json` (with how they were fitted and measured).
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import sys
import threading
from pathlib import Path

import numpy as np

from nels import config
from nels.encoders.base import l2_normalize
from nels.errors import NelsError

DATA = Path(__file__).resolve().parent.parent / "data"
CALIBRATION = DATA / "calibration.json"
PHRASING_FILES = (DATA / "joint_phrases.json", DATA / "joint_phrases_styles.json")
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


@functools.lru_cache(maxsize=16)
def _covered_concepts(space) -> frozenset:
    from nels.encoders.audioset import load_links

    try:
        links = load_links()
    except NelsError:
        links = {}
    voc = space.vocabulary
    kept = set(space.concepts)
    # what the model's classes are kinds of: its labels, and the AudioSet classes an ESC-50 class it covers
    # is a kind of (nels/data/audioset/esc50_links.json: dog -> Dog, Bark)
    anchors = set(space.labels) | {t for label, targets in links.items() if label in kept for t in targets}
    out = kept | anchors
    parents = voc.parents if voc is not None else {}
    for entry in (voc.classes if voc is not None else ()):
        if entry in out:
            continue
        seen, stack = set(), list(parents.get(entry, ()))
        while stack:
            a = stack.pop()
            if a in seen:
                continue
            seen.add(a)
            if a in anchors:
                out.add(entry)
                break
            stack.extend(parents.get(a, ()))
    return frozenset(out)


def covered_concepts(space) -> frozenset:
    """The vocabulary entries a model's classes cover in meaning (`space`: its ConceptSpace): the concepts of
    its space, what its classes are a kind of (its labels; the AudioSet classes the ESC-50 links name for
    them), and every entry below one of those on some line of the ontology (Meow under Cat, Police car
    (siren) under Siren, Raindrop under Rain). The rest of the vocabulary is what the model was never taught."""
    with _lock:
        return _covered_concepts(space)


@functools.lru_cache(maxsize=16)
def _outside_mask(space, known_labels: tuple) -> np.ndarray:
    inside = _covered_concepts(space)
    return np.array([label not in inside for label in known_labels], dtype=bool)


def outside_mask(space, known_labels) -> np.ndarray:
    """Over `known_labels` (the search vocabulary): True where the model does not cover the entry."""
    with _lock:
        return _outside_mask(space, tuple(known_labels))


def _phrasing_texts() -> tuple[list[str], list[str]]:
    texts, owners = [], []
    for f in PHRASING_FILES:
        try:
            classes = json.loads(f.read_text(encoding="utf-8"))["classes"]
        except (OSError, ValueError, KeyError):
            continue
        for label, phrases in classes.items():
            texts += [str(t) for t in phrases]
            owners += [label] * len(phrases)
    return texts, owners


def phrasings_sha256(texts: list[str]) -> str:
    return hashlib.sha256(json.dumps(texts).encode("utf-8")).hexdigest()


@functools.lru_cache(maxsize=1)
def _phrasing_bank() -> tuple[list[str], np.ndarray, np.ndarray]:
    texts, owners = _phrasing_texts()
    if not texts:
        return [], np.zeros(0, dtype=object), np.zeros((0, 384), dtype=np.float32)
    sha = phrasings_sha256(texts)
    vecs = None
    cached = phrasing_vectors_file(sha)
    try:
        with np.load(cached, allow_pickle=False) as z:
            if str(z["sha256"]) == sha and z["vectors"].shape[0] == len(texts):
                vecs = z["vectors"].astype(np.float32)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if vecs is None:  # first use on this machine (or other phrasings): encode them once (~5 s, 2 cores) and cache
        from nels.encoders.text import shared_text_encoder

        print(f"encoding the {len(texts)} class phrasings of the coverage signal, once (cached in {cached.parent})",
              file=sys.stderr, flush=True)
        vecs = shared_text_encoder().encode(texts).astype(np.float32)
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{os.getpid()}.tmp.npz")
            np.savez(tmp, vectors=vecs.astype(np.float16), sha256=np.array(sha))
            os.replace(tmp, cached)
        except OSError:
            pass  # a read-only cache only costs the time
    return texts, np.array(owners, dtype=object), l2_normalize(vecs)


def phrasing_vectors_file(sha: str) -> Path:
    """Where the phrasings' MiniLM vectors (float16) are cached, keyed by a hash of the phrasings."""
    return config.cache_dir() / "text" / f"coverage-phrasings-{sha[:32]}.npz"


def phrasing_bank() -> tuple[list[str], np.ndarray, np.ndarray]:
    """(phrasings, their class label, L2-normalised MiniLM vectors) of nels/data/joint_phrases*.json; the
    vectors are encoded on first use and cached under $NELS_CACHE/text (derived data: not shipped)."""
    with _lock:
        return _phrasing_bank()


@functools.lru_cache(maxsize=16)
def _phrasing_rows(space) -> np.ndarray:
    _, owners, _ = _phrasing_bank()
    if not len(owners):
        return np.zeros(0, dtype=int)
    inside = _covered_concepts(space)
    return np.flatnonzero([o in inside for o in owners])


def phrasing_similarity(space, query_vec: np.ndarray | None, leave_out: str | None = None) -> float | None:
    """The query's best cosine to a phrasing of a class the model covers; None when it covers none (a model
    of other classes than ESC-50's) or without a query vector. leave_out : a phrasing not to compare with
    (the fitting compares each training phrasing with the others only)."""
    if query_vec is None:
        return None
    if not _has_phrasing_classes(space):
        return None
    texts, _, _ = phrasing_bank()
    rows, vecs = _phrasing_rows_vectors(space)
    sims = vecs @ np.asarray(query_vec, dtype=np.float32).reshape(-1)
    if leave_out is not None:
        sims = np.where(np.array([texts[i] == leave_out for i in rows]), -1.0, sims)
    return float(sims.max()) if len(sims) else None


@functools.lru_cache(maxsize=16)
def _phrasing_rows_vectors(space) -> tuple[np.ndarray, np.ndarray]:
    """The rows of the phrasing bank a model covers and their vectors, gathered once (not per query)."""
    rows = _phrasing_rows(space)
    return rows, np.ascontiguousarray(phrasing_bank()[2][rows])


@functools.lru_cache(maxsize=16)
def _has_phrasing_classes(space) -> bool:
    """Whether some class the phrasings describe is covered (cheap: no vectors loaded for other models)."""
    _, owners = _phrasing_texts()
    inside = covered_concepts(space)
    return any(o in inside for o in set(owners))


def text_features(covered: float, known: float, phrasing: float | None = None) -> list[float]:
    """The coverage model's inputs: the best covered similarity, how much better the query matches a sound
    concept the model does not cover (0 when none), and how much better it matches a phrasing of a class
    the model covers (0 when none, or no phrasings)."""
    c = float(covered)
    return [c, max(0.0, float(known) - c), max(0.0, float(phrasing) - c) if phrasing is not None else 0.0]


def text_coverage_probability(covered: float, known: float, phrasing: float | None = None,
                              params: dict | None = None) -> float:
    """P(the model's classes cover the query) from its three similarities (see the module docstring)."""
    p = params if params is not None else (calibration().get("text_coverage") or {})
    w = p.get("weights") or [12.0, -12.0, 12.0]  # unfitted fallback: similarity 0.5 is the edge, a better
    b = p.get("bias", -6.0)  # match elsewhere in the vocabulary counts against
    x = text_features(covered, known, phrasing)
    return sigmoid(b + sum(wi * xi for wi, xi in zip(w, x)))


def text_threshold(params: dict | None = None) -> float:
    p = params if params is not None else (calibration().get("text_coverage") or {})
    return float(p.get("threshold", 0.5))


def text_coverage(text: str, per_model: list[dict]) -> dict:
    """The library's coverage of a text query.

    per_model : one dict per classifier (`model_text_features` plus "model"): {"model", "covered" (best
        similarity to a concept covering its classes), "known" (best similarity to a vocabulary concept it
        does not cover), "phrasing" (best similarity to a phrasing of a class it covers, or None),
        "closest" [(name, similarity)], "nearest_known" (that uncovered concept's name)}.
    Returns {"score" (P(covered), the best model's), "covered" (score >= threshold), "threshold",
    "best_similarity", "model", "closest": [{"label", "similarity"}], "nearest_concept", "models":
    {model: score}}.
    """
    thr = text_threshold()
    scores = {m["model"]: text_coverage_probability(m["covered"], m["known"], m.get("phrasing"))
              for m in per_model}
    best = max(per_model, key=lambda m: (scores[m["model"]], m["covered"]))
    score = scores[best["model"]]
    return {"kind": "text", "score": round(score, 4), "covered": bool(score >= thr), "threshold": round(thr, 4),
            "best_similarity": round(float(best["covered"]), 4), "model": best["model"],
            "closest": [{"label": n, "similarity": round(float(s), 4)} for n, s in best["closest"]],
            "nearest_concept": best.get("nearest_known"),
            "nearest_concept_similarity": round(float(best["known"]), 4),
            "models": {k: round(v, 4) for k, v in scores.items()}}


def text_notice(text: str, cov: dict) -> str:
    """One sentence: "NELS has no class for 'guitar' (it is AudioSet's 'Guitar', which no model here was
    taught); closest: keyboard typing (0.42), ...". It replaces search's weaker notices ("no known sound
    matches", "nothing is clearly recognised"), which say less well that no class means the query."""
    closest = ", ".join(f"{c['label']} ({c['similarity']:.2f})" for c in cov["closest"][:3])
    nearest = cov.get("nearest_concept")
    # name the sound the query means when it clearly means one (MiniLM puts a query near its own label at
    # 0.5-0.8, see nels.search.linguistic): "gunshot" is AudioSet's "Gunshot, gunfire"; gibberish means none
    named = ""
    if nearest and cov.get("nearest_concept_similarity", 0.0) >= NAMED_SIMILARITY \
            and nearest.lower() not in {c["label"].lower() for c in cov["closest"]}:
        named = f" (it is AudioSet's {nearest!r}, which no model here was taught)"
    return f"NELS has no class for {text!r}{named}; closest: {closest or 'none'}."


def model_text_features(space, sims_row: np.ndarray, known_sims_row: np.ndarray, known_labels,
                        query_vec: np.ndarray | None = None, leave_out: str | None = None) -> dict:
    """The per-model inputs of `text_coverage` from one query's ConceptSpace similarities (`sims_row`, per
    group), its similarities to every vocabulary entry (`known_sims_row`, `known_labels`) and its MiniLM
    vector (`query_vec`, for the phrasings; None: not used). leave_out : see `phrasing_similarity`."""
    s = np.asarray(sims_row, dtype=np.float32)
    order = [int(i) for i in np.argsort(-np.where(np.isfinite(s), s, -9.0))[:3]]
    ks = np.where(outside_mask(space, known_labels), np.asarray(known_sims_row, dtype=np.float32), -1.0)
    k = int(np.argmax(ks))
    return {"covered": float(np.nanmax(np.where(np.isfinite(s), s, -1.0))), "known": float(ks[k]),
            "phrasing": phrasing_similarity(space, query_vec, leave_out),
            "closest": [(space.names[i], float(s[i])) for i in order if np.isfinite(s[i])],
            "nearest_known": known_labels[k] if ks[k] > -1.0 else None}


# -- audio --------------------------------------------------------------------------------------------------
def audio_kind(labels) -> str:
    """Which fitted audio model applies to a classifier: 'yamnet' for AudioSet's classes (sigmoid scores),
    else 'softmax' (the CNN, heads: probabilities that sum to 1)."""
    return _audio_kind(tuple(labels or ()))


@functools.lru_cache(maxsize=64)
def _audio_kind(labels: tuple) -> str:  # asked several times per query: 521 look-ups each time was ~0.7 ms
    from nels.encoders.audioset import load_audioset_vocabulary

    known = load_audioset_vocabulary().classes
    return "yamnet" if labels and sum(l in known for l in labels) >= 0.9 * len(labels) else "softmax"


def normalised_entropy(probs) -> float:
    """The entropy of a class distribution over log C, in [0, 1]: 0 when one class has it all, 1 when it is
    spread evenly (C = the number of classes; the probabilities are renormalised to sum to 1)."""
    p = np.clip(np.asarray(probs, dtype=np.float64).reshape(-1), 1e-12, None)
    if p.size < 2:
        return 0.0
    p = p / p.sum()
    return float(-(p * np.log(p)).sum() / np.log(p.size))


def embedding_signal(encoder, raw) -> dict | None:
    """How strongly a query's windows drive the classifier: {"max_logit": the largest logit of any window (the
    CNN's classifier layer on `Encoded.raw`; Hendrycks et al. 2022's max-logit score: unlike the probabilities
    it keeps how strongly the sound matches the best class, not only how it compares with the others), "norm":
    the mean L2 norm of the windows' un-normalised embeddings, "norm_max": the largest, "weights_sha256": the
    weights' checksum (a fit applies to the weights it was made with only)}; None without raw embeddings or a
    checksum; no "max_logit" without a readable classifier layer. bench/fit_audio_embedding.py measured these
    against the Mahalanobis distances to the class means (Lee et al. 2018; Ren et al. 2021)."""
    sha = (getattr(encoder, "meta", None) or {}).get("weights_sha256")
    if raw is None or not len(raw) or not sha:
        return None
    raw = np.asarray(raw, dtype=np.float64)
    n = np.linalg.norm(raw, axis=1)
    out = {"norm": float(n.mean()), "norm_max": float(n.max()), "weights_sha256": str(sha)}
    fc = getattr(getattr(encoder, "model", None), "fc", None)  # the CNN's classifier layer: logits = fc(raw)
    if fc is not None and getattr(fc, "weight", None) is not None and fc.weight.shape[1] == raw.shape[1]:
        w = fc.weight.detach().float().numpy().astype(np.float64)
        b = fc.bias.detach().float().numpy().astype(np.float64) if fc.bias is not None else 0.0
        out["max_logit"] = float((raw @ w.T + b).max())  # the largest logit of the query's surest window
    return out


def probs_explained(labels, probs) -> float:
    """P(explained) of a classifier from its class probabilities alone (calibration.json's fit for its
    `audio_kind`: the normalised entropy, or the largest probability above chance); 1.0 without a fit.
    The audio-fusion gate reads this one (it was chosen with it: `nels.search.calibration.audio_fusion_terms`)."""
    p = (calibration().get("audio_coverage") or {}).get(audio_kind(labels))
    if p is None:
        return 1.0
    c = len(labels)
    if p.get("feature") == "entropy":
        x = normalised_entropy(probs)
    else:
        top = float(np.max(probs))
        x = (top - 1.0 / c) / (1.0 - 1.0 / c) if c > 1 else top  # above chance, so C does not matter
    return sigmoid(p["bias"] + p["weights"][0] * x)


def audio_coverage(query_probs: list[tuple]) -> dict | None:
    """Whether some class explains a query sound.

    query_probs : per classifier (model name, labels, the query's mean class probabilities[, its
        `embedding_signal` or None]).
    Returns {"kind": "audio", "score", "covered", "threshold", "model", "closest": [{"label", "prob"}],
    "models"} or None without classifiers. P(explained) of a classifier is a logistic function: of the fit
    "embedding"'s features (`embedding_signal`'s, and "entropy") where that fit was made with this
    classifier's weights; else of one feature of its class probabilities (`probs_explained`), fitted per kind
    (`audio_kind`). The library explains the sound when any classifier does.
    """
    if not query_probs:
        return None
    cal = calibration().get("audio_coverage") or {}
    emb_fit = cal.get("embedding") or {}
    scores, best = {}, None
    for model, labels, probs, *more in query_probs:
        p = cal.get(audio_kind(labels))
        signal = more[0] if more else None
        if signal is not None and emb_fit.get("weights_sha256") == signal.get("weights_sha256"):
            x = {"entropy": normalised_entropy(probs), **signal}
            z = emb_fit["bias"] + sum(w * float(x[f]) for w, f in zip(emb_fit["weights"], emb_fit["features"]))
            scores[model] = (sigmoid(z), float(emb_fit["threshold"]), True)
        elif p is None:  # no fit for this kind of classifier (YAMNet: see calibration.json): never flagged
            scores[model] = (1.0, 0.0, False)
        else:
            scores[model] = (probs_explained(labels, probs), float(p.get("threshold", 0.5)), True)
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
