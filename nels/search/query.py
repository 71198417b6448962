"""Queries -> ranked results. One code path for the Python API, the CLI and the website.

Modes:
  linguistic  text only: query vs label phrases (MiniLM), times each segment's class probabilities.
  acoustic    audio only: the query's embedding vs every segment's (FAISS, cosine).
  joint       text or audio, compared with segments in the cross-modal joint space.
  fused       reciprocal-rank fusion of every mode that applies to the query.
"""
from __future__ import annotations

import functools
import sqlite3
import threading

import numpy as np

from nels.config import SAMPLE_RATE
from nels.encoders.base import encode_waveform
from nels.encoders.selection import library_encoder, library_primaries
from nels.errors import NelsError, QueryError
from nels.search import calibration as calibration_mod
from nels.search import coverage as coverage_mod
from nels.search import joint as joint_search
from nels.search import linguistic
from nels.search.modes import default_mode
from nels.search.labels import specific_labels
from nels.search.results import Candidate, Filters, Results, group_and_page, nearest_segments, top_labels
from nels.search.tag import TAG_THRESHOLD

from nels.config import (COVERAGE_MARGIN, MAX_K, MAX_QUERY_CHARS, MIN_ACOUSTIC_SCORE,  # noqa: F401
                         MIN_LABEL_SIMILARITY, MIN_LINGUISTIC_SCORE, RRF_K)

_lock = threading.Lock()
_threads_set = False


def _one_inference_thread() -> None:
    """Queries run small models (MiniLM, the CNN on a few windows): with torch's default 2-thread pool,
    1 query in 4 stalled ~100 ms (measured at 100k segments: p95 121 ms vs 29 ms on one thread). One
    thread per query; concurrency comes from serving several queries at once.

    numpy's BLAS too: a query's products are small (a query vector against a few thousand phrase vectors),
    and OpenBLAS's second thread spins for a while after each, waiting for more work; on 2 busy cores that
    cost a text query ~30 ms of CPU (71 -> 42 ms at 100k segments, bench/RESULTS.md). Each product's
    result is the same on one thread (its outputs are split between threads, not its sums)."""
    global _threads_set
    if not _threads_set:
        import torch

        from threadpoolctl import threadpool_limits

        torch.set_num_threads(1)
        threadpool_limits(1, user_api="blas")
        _threads_set = True


@functools.lru_cache(maxsize=4)
def _label_space(labels: tuple[str, ...], vocabulary: str | None):
    from nels.encoders.concepts import ConceptSpace, search_vocabulary

    return ConceptSpace(list(labels), search_vocabulary(vocabulary or labels_vocabulary(labels)))


def labels_vocabulary(labels) -> str | None:
    """The shipped AudioSet vocabulary when most of `labels` are AudioSet class names (YAMNet's), else None."""
    return _labels_vocabulary(tuple(labels or ()))


@functools.lru_cache(maxsize=64)
def _labels_vocabulary(labels: tuple) -> str | None:  # asked per classifier per query: once per label list
    from nels.encoders.audioset import AUDIOSET_VOCABULARY, load_audioset_vocabulary

    known = load_audioset_vocabulary().classes
    if labels and sum(l in known for l in labels) >= 0.9 * len(labels):
        return str(AUDIOSET_VOCABULARY)
    return None


def model_vocabulary(encoder) -> str | None:
    """The vocabulary a model's classes were described with: `<model>/vocabulary.json`, else the copy its
    joint space was trained with (`<model>/joint/vocabulary.json`), else the AudioSet vocabulary for a model
    of AudioSet classes (YAMNet); None: the shipped ESC-50 one. Search adds the AudioSet and ESC-50 classes
    and their hierarchy to whichever it is (`nels.encoders.concepts.search_vocabulary`)."""
    base = getattr(encoder, "path", None)
    if base is not None:
        from pathlib import Path

        for f in (Path(base) / "vocabulary.json", Path(base) / "joint" / "vocabulary.json"):
            if f.exists():
                return str(f)
    return labels_vocabulary(getattr(encoder, "labels", None))


def label_space(labels, vocabulary: str | None = None) -> "object":
    """The hierarchy-aware label space of a model's labels (a ConceptSpace over the search vocabulary)."""
    with _lock:
        return _label_space(tuple(labels), vocabulary)


def text_scores(texts, probs: np.ndarray, labels, vocabulary: str | None = None) -> np.ndarray:
    """(n_rows, n_texts): how linguistic search scores each row of `probs` (segments or clips, columns =
    `labels`) for each text query, with the same label space, weights and hierarchy as `search`."""
    space = label_space(labels, vocabulary)
    sims, _ = space.query(list(texts))
    w = linguistic.label_weights(sims)
    return np.stack([linguistic.score(w[i], probs, space.members) for i in range(len(w))], axis=1)


_encoder_for = library_encoder  # the library's acoustic encoder, checked against its catalogue


def query_audio(audio, start: float | None = None, end: float | None = None,
                sr: int = SAMPLE_RATE) -> tuple[np.ndarray, int]:
    """A query waveform from a path, bytes or array, cropped to [start, end] seconds, and its sample rate.

    sr : the rate a file or bytes are decoded to (the encoder's); an array is taken as SAMPLE_RATE audio
        (the Python API's convention), whatever `sr` is.
    """
    from nels.audio.decode import check_samples, decode

    for v in (start, end):
        if v is not None and not (np.isfinite(v) and 0 <= v <= 1e6):
            raise QueryError(f"bad query span: start {start}, end {end}")
    if isinstance(audio, np.ndarray):
        x, sr = audio.astype(np.float32).reshape(-1), SAMPLE_RATE
        try:
            check_samples(x, "the query audio")  # NaN, infinity or an absurd amplitude: say so
        except NelsError as exc:
            raise QueryError(str(exc)) from None
    else:
        x = decode(audio, sr=sr, max_seconds=(end + 1) if end else 600.0)
    a = int((start or 0) * sr)
    b = int(end * sr) if end is not None else x.size
    if a < 0 or b <= a:
        raise QueryError(f"bad query span: start {start}, end {end}")
    x = x[a:b]
    if x.size < int(0.1 * sr):
        raise QueryError("the query audio is shorter than 0.1 s")
    if np.abs(x).max() < 1e-4:
        raise QueryError("the query audio is silent")
    return x, sr


def encode_query_windows(encoder, x: np.ndarray, sr: int = SAMPLE_RATE):
    """The query's 2 s windows through the encoder (`Encoded`: embeddings, class probabilities, raw embeddings).

    A query is windowed like the library, so a 5 s query matches a segment that resembles any part
    of it (see `_acoustic`), rather than a blurred average of its parts.
    """
    return encode_waveform(encoder, x, sr, whole_if_empty=True)


def encode_query_audio(encoder, x: np.ndarray, sr: int = SAMPLE_RATE):
    """Embeddings of the query's 2 s windows (n, dim), and its mean class probabilities."""
    enc = encode_query_windows(encoder, x, sr)
    probs = enc.probs.mean(axis=0) if enc.probs is not None else None
    return enc.embeddings, probs


def query_waveforms(encoders, audio, start: float | None, end: float | None) -> list[tuple[np.ndarray, int]]:
    """(waveform, sample rate) of one audio query for each of `encoders`, in their order, decoded once per
    sample rate (not once per encoder: ~7 ms for a 5 s 44.1 kHz WAV).

    The encoders then run one after the other on the calling thread: the second on a thread beside the first
    (YAMNet's interpreter and torch release the GIL) gained nothing on 2 shared cores (wall = CPU time), and
    under load a query waited for that thread to get a core (wall p50 114 ms for 56 ms of CPU at 100k
    segments, bench/RESULTS.md): concurrency comes from serving several queries at once, as for torch's
    threads (`_one_inference_thread`).
    """
    decoded: dict[int, tuple[np.ndarray, int]] = {}
    for enc in encoders:
        if enc.sample_rate not in decoded:
            decoded[enc.sample_rate] = query_audio(audio, start, end, enc.sample_rate)
    return [decoded[enc.sample_rate] for enc in encoders]


def _acoustic(lib, vecs: np.ndarray, space: str, n: int, key: str = "acoustic") -> list[Candidate]:
    """k-NN for every query window; a segment scores its best cosine to any window (its part `key`)."""
    ranked = nearest_segments(lib.store(space), vecs, n)
    tag = f" [{space}]" if key != "acoustic" else ""
    return [Candidate(i, s, f"sounds like the query (cosine {s:.2f}){tag}", {key: s}) for i, s in ranked]


def _text_spaces(lib, text: str) -> list[tuple]:
    """Per classifier of the library: (model, ids, probs, labels, space, sims, matched, coverage features),
    the query compared once with the model's concepts and with every concept of the search vocabulary
    (`nels.search.coverage`). [] when the library has no class probabilities."""
    mats = lib.prob_matrices()
    if not mats:
        return []
    encoders = {e.name: e for e in library_primaries(lib)}
    per = []
    for ids, probs, labels, model in mats:
        space, sims, matched, feats = classifier_text_view(text, labels, model_vocabulary(encoders.get(model)))
        per.append((model, ids, probs, labels, space, sims, matched, {"model": model, **feats}))
    return per


def classifier_text_view(text: str, labels, vocab: str | None, leave_out: str | None = None) -> tuple:
    """One classifier's view of a text query: (its label space, similarity per concept group, the phrase
    matched per group, its coverage features for `coverage.text_coverage`). leave_out : a training phrasing
    the coverage features do not compare with (validation queries drawn from those phrasings)."""
    space = label_space(labels, vocab)
    vec = space.encoder.encode([text])
    sims, matched = space.similarity(vec)
    known = coverage_mod.known_space(vocab)
    ksims, _ = known.similarity(vec)
    feats = coverage_mod.model_text_features(space, sims[0], ksims[0], known.labels, vec[0], leave_out)
    return space, sims[0], matched[0], feats


def _linguistic(lib, text: str, n: int, per: list | None = None,
                covers: dict[str, float] | None = None) -> tuple[list[Candidate], float, dict[str, float]]:
    """Segments ranked by the probability their classifier puts on the labels the query means.

    With several classifiers (the own CNN, a pretrained backbone), each one's *coverage* of the query is
    its best label similarity; only the classifiers within COVERAGE_MARGIN of the best coverage rank
    ("guitar" is YAMNet's alone, "dog" both models'). Those left are fused by the fitted relevance weighted
    by each classifier's P(covered) (`calibration.covered_relevance`, with `covers` = {model: P(covered)}
    from `coverage.text_coverage`), else by reciprocal rank. Returns (candidates, best label similarity,
    coverage per model). per : `_text_spaces(lib, text)`, when the caller has it.
    """
    per = _text_spaces(lib, text) if per is None else per
    if not per:
        raise QueryError("this library has no class probabilities (it was indexed without a classifier);"
                         " run 'nels reindex --model default' to add them")
    coverage = {p[0]: float(p[5].max()) for p in per}
    best = max(coverage.values())
    lists: dict[str, list[Candidate]] = {}
    for model, ids, probs, labels, space, sims, matched, _ in per:
        if len(per) > 1 and coverage[model] < best - COVERAGE_MARGIN:
            continue  # this model's vocabulary does not cover the query: its ranking would be noise
        w = linguistic.label_weights(sims)
        rows, scores = linguistic.top_segments(w, probs, n, order=_label_order(lib, model, probs),
                                               members=space.members)
        tag = f" [{model}]" if len(per) > 1 else ""
        out = []
        for j, sj in zip(rows.tolist(), scores.tolist()):
            # explained lazily: only the results shown are explained (200 explanations cost 6 ms)
            expl = functools.partial(_explain, text, sims, matched, probs[j], labels, space, tag)
            out.append(Candidate(int(ids[j]), sj, expl, {"linguistic" + (f":{model}" if tag else ""): sj}))
        lists[model] = out
    if len(lists) == 1:
        return next(iter(lists.values())), best, coverage
    fused = rrf(lists)
    for c in fused:  # a fused candidate's own score: the best probability mass any model gave it
        c.mass = max(c.parts.values())
    part_features, feat_covers = _linguistic_features(per, covers)
    if feat_covers and calibration_mod.attach(fused, part_features, {f: 0.0 for f in part_features.values()},
                                              feat_covers) == "fitted" and calibration_mod.coverage_gamma():
        for c in fused:  # the classifiers that cover the query speak (a model left out above has mass 0)
            c.score = c.relevance
    return sorted(fused, key=lambda c: -c.score), best, coverage


def _linguistic_features(per: list, covers: dict[str, float] | None) -> tuple[dict[str, str], dict[str, float]]:
    """Part key -> calibration feature of each classifier's linguistic score, and {feature: P(covered)} of
    the classifiers behind them (the best one's where two classifiers share a kind); {} without `covers`."""
    part_features, feat_covers = {}, {}
    for model, _, _, labels, *_ in per:
        feat = calibration_mod.feature_name("linguistic", calibration_mod.classifier_kind(labels))
        part_features["linguistic" if len(per) == 1 else f"linguistic:{model}"] = feat
        if covers and model in covers:
            feat_covers[feat] = max(feat_covers.get(feat, 0.0), float(covers[model]))
    return part_features, feat_covers


def _explain(text, sims, matched, probs_row, labels, space, tag: str) -> str:
    return linguistic.explain(text, sims, matched, probs_row, labels, space.label_names, members=space.members,
                              concept_names=space.names) + tag


def _label_order(lib, model: str, probs: np.ndarray) -> np.ndarray:
    """linguistic.label_order of a classifier's probability matrix, kept as long as that matrix is."""
    key = f"label_order:{model}"
    cached = lib.remembered(key)
    if cached is not None and cached[0] is probs:
        return cached[1]
    order = linguistic.label_order(probs)
    lib.remember(key, (probs, order))
    return order


def _joint(lib, text: str | None, audio_vec, n: int, mapped=None) -> list[Candidate] | None:
    return joint_search.search_candidates(lib, text=text, audio=audio_vec, n=n, mapped=mapped)


def rrf(lists: dict[str, list[Candidate]], k: int = RRF_K, weights: dict[str, float] | None = None) -> list[Candidate]:
    """Weighted reciprocal rank fusion: score = sum over modes of weight / (k + rank); weights default
    to 1 (the weights of text fusion are fitted on validation by `nels train-joint`)."""
    fused: dict[int, Candidate] = {}
    for mode, cands in lists.items():
        w = (weights or {}).get(mode, 1.0)
        for rank, c in enumerate(cands):
            f = fused.get(c.segment_id)
            if f is None:
                f = fused[c.segment_id] = Candidate(c.segment_id, 0.0, "", {})
            f.score += w / (k + rank + 1)
            f.parts.update(c.parts or {mode: c.score})
            f.why.append(c.explain if c.why else c.explanation)  # a fused candidate's own reasons, not its ""
    return list(fused.values())


def search(lib, text: str | None = None, audio=None, mode: str | None = None, k: int = 10, page: int = 1,
           start: float | None = None, end: float | None = None, label: str | None = None,
           source: str | None = None, min_duration: float | None = None,
           max_duration: float | None = None, log_weak: bool = True) -> Results:
    """Search `lib`. See the module docstring for modes; `mode=None` picks the best available.

    log_weak : count a text query that the library's classes do not cover in its query log
        (`nels vocabulary candidates`); evaluations turn it off.
    """
    joint_mod = joint_search
    _one_inference_thread()
    if text is not None:
        text = " ".join(str(text).split())
        if not text:
            text = None
        elif len(text) > MAX_QUERY_CHARS:
            raise QueryError(f"the query is {len(text)} characters long; the limit is {MAX_QUERY_CHARS}")
    if text is None and audio is None:
        raise QueryError("empty query: give some text, an audio file, or both")
    if not 1 <= k <= MAX_K:
        raise QueryError(f"k must be between 1 and {MAX_K}")
    if page < 1:
        raise QueryError("page must be >= 1")
    if lib.newest_ids()["segments"] == 0:
        return Results([], notice="the library is empty: add audio with 'nels ingest'", mode=mode or "")

    filters = Filters(label, source, min_duration, max_duration)
    has_joint = joint_mod.library_has_joint(lib)
    jenc = joint_mod.library_joint(lib) if has_joint else None
    text_fusion = (jenc.meta.get("fusion") or {}).get("text") if jenc is not None else None
    if mode is None:
        mode = default_mode(lib, text is not None, audio is not None, has_joint)
    if mode == "acoustic" and audio is None:
        raise QueryError("acoustic mode needs an audio query (--audio FILE)")
    if mode == "linguistic" and text is None:
        raise QueryError("linguistic mode needs a text query")
    if mode == "joint" and not has_joint:
        raise QueryError("this library has no joint-space vectors; run 'nels reindex' after 'nels train-joint'")

    n = max(200, 10 * k * page) * (20 if filters.active() else 1)
    lists: dict[str, list[Candidate]] = {}
    notice, qlabels = None, []
    vecs = None
    coverage: dict[str, float] = {}
    part_features: dict[str, str] = {}  # part key -> calibration feature (nels.search.calibration)
    feature_lists: dict[str, list[Candidate]] = {}  # each single mode's own list, for the fill values
    cov_text = cov_audio = None
    text_covers: dict[str, float] = {}  # linguistic feature -> P(covered) of its classifier
    if audio is not None:
        encs = [e for e in library_primaries(lib) if lib.catalogue.has_space(e.space)] or [_encoder_for(lib)]
        acoustic: dict[str, list[Candidate]] = {}
        query_probs = []
        for i, (enc, (x, sr)) in enumerate(zip(encs, query_waveforms(encs, audio, start, end))):
            windows = encode_query_windows(enc, x, sr)
            evecs = windows.embeddings
            qprobs = windows.probs.mean(axis=0) if windows.probs is not None else None
            if i == 0:
                vecs = evecs  # the primary's: the joint space maps these
            if qprobs is not None:
                qlabels = sorted(qlabels + top_labels(qprobs, list(enc.labels)), key=lambda l: -l["prob"])[:5]
                query_probs.append((enc.name, list(enc.labels), qprobs,
                                    coverage_mod.embedding_signal(enc, windows.raw)))
            if mode in ("acoustic", "fused"):
                key = "acoustic" if len(encs) == 1 else f"acoustic:{enc.space}"
                acoustic[enc.space] = _acoustic(lib, evecs, enc.space, n, key)
                part_features[key] = calibration_mod.feature_name("acoustic", enc.space)
                feature_lists[part_features[key]] = acoustic[enc.space]
        cov_audio = coverage_mod.audio_coverage(query_probs)
        if acoustic:
            tops = [c[0].score for c in acoustic.values() if c]
            lists["acoustic"] = next(iter(acoustic.values())) if len(acoustic) == 1 else \
                sorted(rrf(acoustic), key=lambda c: -c.score)
            if tops and max(tops) < MIN_ACOUSTIC_SCORE:
                notice = "nothing in the library sounds much like this query"
        if cov_audio is not None and not cov_audio["covered"]:
            # no class explains the sound: say so rather than name the nearest class as what it is
            notice = coverage_mod.audio_notice(cov_audio) + (f"; {notice}" if notice else "")
            qlabels = []
    per = []
    if text is not None:
        per = _text_spaces(lib, text)
        if per:
            cov_text = coverage_mod.text_coverage(text, [p[7] for p in per])
    if text is not None and mode in ("linguistic", "fused"):
        try:
            cands, best_sim, coverage = _linguistic(lib, text, n, per, (cov_text or {}).get("models"))
        except QueryError:
            if mode == "linguistic" or has_joint:
                raise
            cands, best_sim = [], 1.0
        if best_sim < MIN_LABEL_SIMILARITY:
            notice = f"no known sound matches {text!r} well (best label similarity {best_sim:.2f})"
            cands = []
        elif cands and (cands[0].mass if cands[0].mass is not None else cands[0].score) < MIN_LINGUISTIC_SCORE:
            top = (cands[0].mass if cands[0].mass is not None else cands[0].score)
            notice = (f"nothing in the library is clearly recognised as {text!r} (best p={top:.2f});"
                      " these are only the closest")
        lists["linguistic"] = cands
        ling_features, text_covers = _linguistic_features(per, (cov_text or {}).get("models"))
        part_features.update(ling_features)
        for feat in ling_features.values():
            feature_lists.setdefault(feat, [])  # a result no classifier scored has mass 0
    if cov_text is not None and not cov_text["covered"]:
        # one sentence, in place of the weaker notices above (they say less well that no class means the query)
        notice = coverage_mod.text_notice(text, cov_text)
        if cov_audio is not None and not cov_audio["covered"]:
            notice = notice[:-1] + "; and " + coverage_mod.audio_notice(cov_audio)
        if log_weak:
            _log_weak(lib, text, cov_text)
    if mode == "linguistic" and text is not None and not lists.get("linguistic"):
        return Results([], notice=notice or "no match", mode=mode, coverage=_coverage(cov_text, cov_audio))
    # the query mapped into the joint space once, for the joint search and the suggested tags / related words
    joint_vecs = jenc.audio(vecs) if jenc is not None and vecs is not None and \
        (mode in ("joint", "fused") or page == 1) else None
    joint_text = jenc.text([text]) if jenc is not None and text is not None and \
        (mode in ("joint", "fused") or page == 1) else None
    if mode in ("joint", "fused") and has_joint:
        # the joint space is its acoustic model's: with several classifiers it answers text only where
        # that model's vocabulary covers the query (see _linguistic)
        joint_covers = not coverage or jenc is None or jenc.audio_model not in coverage or \
            coverage[jenc.audio_model] >= max(coverage.values()) - COVERAGE_MARGIN
        if text is not None and (joint_covers or mode == "joint"):
            lists["joint_text"] = _joint(lib, text, None, n, joint_text) or []
            part_features["joint"] = calibration_mod.feature_name("joint_text", "joint")
            feature_lists[part_features["joint"]] = lists["joint_text"]
        if vecs is not None:
            lists["joint_audio"] = [Candidate(c.segment_id, c.score, c.explanation, {"joint_audio": c.score})
                                    for c in (_joint(lib, None, vecs, n, joint_vecs) or [])]
            part_features["joint_audio"] = calibration_mod.feature_name("joint_audio", "joint")
            feature_lists[part_features["joint_audio"]] = lists["joint_audio"]

    extras = {}
    if has_joint and page == 1:
        # the joint space knows only its model's classes and puts any words or sound near one of them: its
        # tags and related words are limited to the classes that model hears in the query or its words name
        if jenc is not None and vecs is not None:
            extras["suggested_tags"] = joint_mod.suggest_tags(
                jenc, vecs, classes=_joint_audio_classes(query_probs, jenc.audio_model, cov_audio), mapped=joint_vecs)
        if jenc is not None and text is not None:
            extras["related_words"] = joint_mod.related_words(
                jenc, text, classes=_joint_text_classes(per, jenc.audio_model, cov_text), mapped=joint_text)
    cov = _coverage(cov_text, cov_audio)
    lists = {m: c for m, c in lists.items() if c}
    if not lists:
        return Results([], notice=notice or "no match", query_labels=qlabels, mode=mode, coverage=cov, **extras)
    weights = None
    if text_fusion and text is not None and audio is None:
        w = text_fusion.get("weights") or {}
        weights = {"linguistic": w.get("linguistic", 1.0), "joint_text": w.get("joint", 1.0)}
    cands = next(iter(lists.values())) if len(lists) == 1 else rrf(lists, weights=weights)
    terms = None
    if audio is not None and text is None:  # several encoders' spaces: fused as validation chose for unseen sounds
        # P(explained) per classifier, by its kind, from its class probabilities: the gate the fusion was chosen
        # with (the embedding signal of `cov_audio` is not in it: re-choosing the fusion with it is left to do)
        explained = {calibration_mod.classifier_kind(labels): round(coverage_mod.probs_explained(labels, probs), 4)
                     for _, labels, probs, *_ in query_probs}
        terms = calibration_mod.audio_fusion_terms(set(part_features.values()), explained)
    how = calibration_mod.attach(cands, part_features, calibration_mod.fill_values(feature_lists, n),
                                 text_covers if text is not None else None, terms)
    if cov_text is not None and not cov_text["covered"]:
        # relevance was fitted on queries the vocabulary covers: P(relevant) = P(relevant | covered) x P(covered)
        # (an uncovered query's ranking follows the nearest wrong class), so "guitar" on an ESC-50 library
        # does not show 75 % beside "NELS has no class for 'guitar'"
        for c in cands:
            if c.relevance is not None:
                c.relevance = round(float(c.relevance) * float(cov_text["score"]), 4)
    if len(set(part_features.values())) > 1 and how == "fitted" and \
            calibration_mod.fuse_by_relevance("audio" if audio is not None else "text"):
        for c in cands:  # the fitted model ranks (validation chose it over reciprocal rank): score = relevance
            c.score = c.relevance
    chosen: list[Candidate] = []
    qlabels = specific_labels(qlabels)  # "dog (0.9)", not YAMNet's "Animal (0.95)" above it
    out = Results(group_and_page(lib, cands, k, page, filters, chosen), notice=notice, query_labels=qlabels,
                  mode=mode, coverage=cov, calibration=how, **extras)
    out.features = [c.values for c in chosen]
    return out


def _joint_text_classes(per: list, model: str, cov_text: dict | None) -> set[str]:
    """The classes of the joint space's model that a text query names: the labels under the concepts its
    linguistic view weighs most (`linguistic.label_weights` >= half the largest). None when the vocabulary
    does not cover the query, or when another classifier covers it better by more than COVERAGE_MARGIN (the
    rule by which the joint space does not rank such a query: "guitar" is YAMNet's, not the ESC-50 CNN's)."""
    if cov_text is not None and not cov_text["covered"]:
        return set()
    mine = [p for p in per if p[0] == model]
    if not mine:
        return set()
    _, _, _, labels, space, sims, *_ = mine[0]
    if float(sims.max()) < max(float(p[5].max()) for p in per) - COVERAGE_MARGIN:
        return set()
    w = linguistic.label_weights(sims)
    named = np.asarray(space.members)[w >= 0.5 * w.max()].any(axis=0)
    return {labels[j] for j in np.flatnonzero(named)}


def _joint_audio_classes(query_probs: list, model: str, cov_audio: dict | None) -> set[str]:
    """The classes of the joint space's model that it hears in an audio query (mean probability >= nels tag's
    default threshold); none when no class explains the sound."""
    if cov_audio is not None and not cov_audio["covered"]:
        return set()
    for name, labels, probs, *_ in query_probs:
        if name == model:
            return {labels[j] for j in np.flatnonzero(np.asarray(probs) >= TAG_THRESHOLD)}
    return set()


def _coverage(cov_text: dict | None, cov_audio: dict | None) -> dict | None:
    if cov_text is not None and cov_audio is not None:
        return {"kind": "text+audio", "text": cov_text, "audio": cov_audio,
                "covered": cov_text["covered"] and cov_audio["covered"]}
    return cov_text if cov_text is not None else cov_audio


def _log_weak(lib, text: str, cov: dict) -> None:
    """Count a weakly covered text query in the catalogue's query log (what `nels vocabulary candidates`
    lists); a library that cannot be written to still answers."""
    closest = cov["closest"][0]["label"] if cov.get("closest") else None
    try:
        lib.catalogue.log_weak_query(text, cov["score"], closest)
    except (NelsError, OSError, sqlite3.Error):
        pass
