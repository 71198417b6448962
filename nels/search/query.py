"""Queries -> ranked results. One code path for the Python API, the CLI and the website.

Modes:
  linguistic  text only: query vs label phrases (MiniLM), times each segment's class probabilities.
  acoustic    audio only: the query's embedding vs every segment's (FAISS, cosine).
  joint       text or audio, compared with segments in the cross-modal joint space.
  fused       reciprocal-rank fusion of every mode that applies to the query.
"""
from __future__ import annotations

import functools
import threading

import numpy as np

from nels.config import SAMPLE_RATE
from nels.encoders.base import encode_waveform
from nels.encoders.selection import library_encoder
from nels.errors import QueryError
from nels.search import joint as joint_search
from nels.search import linguistic
from nels.search.modes import default_mode
from nels.search.results import Candidate, Filters, Results, group_and_page, nearest_segments, top_labels

from nels.config import (MAX_K, MAX_QUERY_CHARS, MIN_ACOUSTIC_SCORE, MIN_LABEL_SIMILARITY,  # noqa: F401
                         MIN_LINGUISTIC_SCORE, RRF_K)

_lock = threading.Lock()
_threads_set = False


def _one_inference_thread() -> None:
    """Queries run small models (MiniLM, the CNN on a few windows): with torch's default 2-thread pool,
    1 query in 4 stalled ~100 ms (measured at 100k segments: p95 121 ms vs 29 ms on one thread). One
    thread per query; concurrency comes from serving several queries at once."""
    global _threads_set
    if not _threads_set:
        import torch

        torch.set_num_threads(1)
        _threads_set = True


@functools.lru_cache(maxsize=4)
def _label_space(labels: tuple[str, ...], vocabulary: str | None):
    from nels.encoders.text import LabelSpace, load_vocabulary

    return LabelSpace(list(labels), load_vocabulary(vocabulary) if vocabulary else None)


def model_vocabulary(encoder) -> str | None:
    """The vocabulary a model's classes were described with: `<model>/vocabulary.json`, else the copy its
    joint space was trained with (`<model>/joint/vocabulary.json`); None: the shipped one."""
    base = getattr(encoder, "path", None)
    if base is None:
        return None
    from pathlib import Path

    for f in (Path(base) / "vocabulary.json", Path(base) / "joint" / "vocabulary.json"):
        if f.exists():
            return str(f)
    return None


def label_space(labels, vocabulary: str | None = None) -> "object":
    with _lock:
        return _label_space(tuple(labels), vocabulary)


_encoder_for = library_encoder  # the library's acoustic encoder, checked against its catalogue


def query_audio(audio, start: float | None = None, end: float | None = None,
                sr: int = SAMPLE_RATE) -> tuple[np.ndarray, int]:
    """A query waveform from a path, bytes or array, cropped to [start, end] seconds, and its sample rate.

    sr : the rate a file or bytes are decoded to (the encoder's); an array is taken as SAMPLE_RATE audio
        (the Python API's convention), whatever `sr` is.
    """
    from nels.audio.decode import decode

    if isinstance(audio, np.ndarray):
        x, sr = audio.astype(np.float32).reshape(-1), SAMPLE_RATE
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


def encode_query_audio(encoder, x: np.ndarray, sr: int = SAMPLE_RATE):
    """Embeddings of the query's 2 s windows (n, dim), and its mean class probabilities.

    A query is windowed like the library, so a 5 s query matches a segment that resembles any part
    of it (see `_acoustic`), rather than a blurred average of its parts.
    """
    enc = encode_waveform(encoder, x, sr, whole_if_empty=True)
    probs = enc.probs.mean(axis=0) if enc.probs is not None else None
    return enc.embeddings, probs


def _acoustic(lib, vecs: np.ndarray, space: str, n: int) -> list[Candidate]:
    """k-NN for every query window; a segment scores its best cosine to any window."""
    ranked = nearest_segments(lib.store(space), vecs, n)
    return [Candidate(i, s, f"sounds like the query (cosine {s:.2f})", {"acoustic": s}) for i, s in ranked]


def _linguistic(lib, text: str, n: int) -> tuple[list[Candidate], float]:
    pm = lib.prob_matrix()
    if pm is None:
        raise QueryError("this library has no class probabilities (it was indexed without a classifier);"
                         " run 'nels reindex --model default' to add them")
    ids, probs, labels, _ = pm
    space = label_space(labels, model_vocabulary(_encoder_for(lib)))
    sims, matched = space.query([text])
    sims, matched = sims[0], matched[0]
    w = linguistic.label_weights(sims)
    rows, scores = linguistic.top_segments(w, probs, n, order=_label_order(lib, probs))
    out = []
    for j, sj in zip(rows.tolist(), scores.tolist()):
        # explained lazily: only the results shown are explained (200 explanations cost 6 ms)
        expl = functools.partial(linguistic.explain, text, sims, matched, probs[j], labels, space.names)
        out.append(Candidate(int(ids[j]), sj, expl, {"linguistic": sj}))
    return out, float(sims.max())


def _label_order(lib, probs: np.ndarray) -> np.ndarray:
    """linguistic.label_order of the library's probability matrix, kept as long as that matrix is."""
    cached = lib.remembered("label_order")
    if cached is not None and cached[0] is probs:
        return cached[1]
    order = linguistic.label_order(probs)
    lib.remember("label_order", (probs, order))
    return order


def _joint(lib, text: str | None, audio_vec, n: int) -> list[Candidate] | None:
    return joint_search.search_candidates(lib, text=text, audio=audio_vec, n=n)


def rrf(lists: dict[str, list[Candidate]], k: int = RRF_K, weights: dict[str, float] | None = None) -> list[Candidate]:
    """Weighted reciprocal rank fusion: score = sum over modes of weight / (k + rank); weights default
    to 1 (the weights of text fusion are fitted on validation by `nels train-joint`)."""
    fused: dict[int, Candidate] = {}
    for mode, cands in lists.items():
        w = (weights or {}).get(mode, 1.0)
        for rank, c in enumerate(cands):
            f = fused.setdefault(c.segment_id, Candidate(c.segment_id, 0.0, "", {}))
            f.score += w / (k + rank + 1)
            f.parts.update(c.parts or {mode: c.score})
            f.why.append(c.explanation)
    return list(fused.values())


def search(lib, text: str | None = None, audio=None, mode: str | None = None, k: int = 10, page: int = 1,
           start: float | None = None, end: float | None = None, label: str | None = None,
           source: str | None = None, min_duration: float | None = None,
           max_duration: float | None = None) -> Results:
    """Search `lib`. See the module docstring for modes; `mode=None` picks the best available."""
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
    if audio is not None:
        enc = _encoder_for(lib)
        x, sr = query_audio(audio, start, end, enc.sample_rate)
        vecs, qprobs = encode_query_audio(enc, x, sr)
        if qprobs is not None:
            qlabels = top_labels(qprobs, list(enc.labels))
        if mode in ("acoustic", "fused"):
            lists["acoustic"] = _acoustic(lib, vecs, enc.space, n)
            if lists["acoustic"] and lists["acoustic"][0].score < MIN_ACOUSTIC_SCORE:
                notice = "nothing in the library sounds much like this query"
    if text is not None and mode in ("linguistic", "fused"):
        try:
            cands, best_sim = _linguistic(lib, text, n)
        except QueryError:
            if mode == "linguistic" or has_joint:
                raise
            cands, best_sim = [], 1.0
        if best_sim < MIN_LABEL_SIMILARITY:
            notice = f"no known sound matches {text!r} well (best label similarity {best_sim:.2f})"
            if mode == "linguistic":
                return Results([], notice=notice, mode=mode)
            cands = []
        elif cands and cands[0].score < MIN_LINGUISTIC_SCORE:
            notice = (f"nothing in the library is clearly recognised as {text!r} (best p={cands[0].score:.2f});"
                      " these are only the closest")
        lists["linguistic"] = cands
    if mode in ("joint", "fused") and has_joint:
        if text is not None:
            lists["joint_text"] = _joint(lib, text, None, n) or []
        if vecs is not None:
            lists["joint_audio"] = _joint(lib, None, vecs, n) or []

    extras = {}
    if has_joint and page == 1:
        if jenc is not None and vecs is not None:
            extras["suggested_tags"] = joint_mod.suggest_tags(jenc, vecs)
        if jenc is not None and text is not None:
            extras["related_words"] = joint_mod.related_words(jenc, text)
    lists = {m: c for m, c in lists.items() if c}
    if not lists:
        return Results([], notice=notice or "no match", query_labels=qlabels, mode=mode, **extras)
    weights = None
    if text_fusion and text is not None and audio is None:
        w = text_fusion.get("weights") or {}
        weights = {"linguistic": w.get("linguistic", 1.0), "joint_text": w.get("joint", 1.0)}
    cands = next(iter(lists.values())) if len(lists) == 1 else rrf(lists, weights=weights)
    return Results(group_and_page(lib, cands, k, page, filters), notice=notice, query_labels=qlabels, mode=mode,
                   **extras)
