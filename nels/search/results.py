"""Turning scored segments into results: one per clip (its best segment), filtered and paged."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from nels.search import calibration
from nels.search.labels import specific_labels


class Results(list):
    """A list of result dicts (the `search --json` contract) with what a person should also be told.

    notice : a sentence when the query had no good match, or a mode had to fall back.
    query_labels : for audio queries, "what is this sound?" (top labels of the query itself).
    mode : the mode that produced the ranking.

    suggested_tags : audio queries with a joint space: free-text tags near the sound (audio -> text).
    related_words : text queries with a joint space: sound words near the query (text -> text).
    coverage : how well the library's classes cover the query (`nels.search.coverage`): {"kind": "text" or
        "audio", "score": P(covered) in [0, 1], "covered": bool, "threshold", "model", "closest": [...], ...};
        a text and an audio query together: {"text": {...}, "audio": {...}}; None without classifiers.
    calibration : how each result's `relevance` was computed: "fitted" (a model fitted on validation for
        exactly these modes), "per-mode" (per-mode fits, the most confident mode), "default" (no fit for
        these modes: the best raw score clipped to [0, 1]).

    Each result has `relevance` (calibrated P(relevant), [0, 1]), `parts` (each mode's own score: the
    probability mass on the query's classes, or a cosine) and `score` (what the ranking sorted by).
    """

    def __init__(self, items: Iterable[dict] = (), notice: str | None = None, query_labels=None, mode: str = "",
                 suggested_tags=None, related_words=None, coverage: dict | None = None, calibration: str = ""):
        super().__init__(items)
        self.notice, self.query_labels, self.mode = notice, query_labels or [], mode
        self.suggested_tags, self.related_words = suggested_tags or [], related_words or []
        self.coverage, self.calibration = coverage, calibration
        self.features: list[dict] = []  # per result, the relevance model's inputs (for fitting; not in to_dict)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "notice": self.notice, "coverage": self.coverage, "query_labels": self.query_labels,
                "suggested_tags": self.suggested_tags, "related_words": self.related_words,
                "calibration": self.calibration, "results": list(self)}


@dataclass
class Filters:
    label: str | None = None
    source: str | None = None
    min_duration: float | None = None
    max_duration: float | None = None

    def active(self) -> bool:
        return any(v is not None for v in (self.label, self.source, self.min_duration, self.max_duration))

    def keep(self, row: dict) -> bool:
        # among the first three labels a person sees (the most specific: a filter "sheep" keeps a sheep whose
        # stored labels start with YAMNet's "Livestock, ..." and "Animal")
        if self.label is not None and self.label not in {l["label"] for l in specific_labels(row["labels"])[:3]}:
            return False
        if self.source is not None:
            hay = " ".join(str(row.get(k) or "") for k in ("source_uri", "webpage_url", "title")).lower()
            if self.source.lower() not in hay:
                return False
        if self.min_duration is not None and row["duration"] < self.min_duration:
            return False
        if self.max_duration is not None and row["duration"] > self.max_duration:
            return False
        return True


@dataclass
class Candidate:
    segment_id: int
    score: float
    explanation: "str | Callable[[], str]"  # a callable is evaluated only if the candidate is shown
    parts: dict = field(default_factory=dict)  # per-mode scores, for fused explanations
    why: list = field(default_factory=list)  # fused: the explanations of each mode that found it
    mass: float | None = None  # fused linguistic lists: the best class-probability mass any model gave it
    relevance: float | None = None  # calibrated P(relevant) from the parts (nels.search.calibration)
    values: dict | None = None  # the relevance model's inputs: per feature, the raw score (fills included)

    def explain(self) -> str:
        parts = [self.explanation] if self.explanation else []
        return "; ".join(p() if callable(p) else p for p in parts + self.why)


def group_and_page(lib, cands: list[Candidate], k: int, page: int, filters: Filters,
                   chosen: list | None = None) -> list[dict]:
    """Best segment per clip, in score order; filters applied; page `page` of size `k`.
    chosen : a list that receives the candidates of the page's results, in order."""
    cands = sorted(cands, key=lambda c: -c.score)
    want = k * page
    out: list[dict] = []
    seen: set[int] = set()
    # the catalogue rows are fetched in blocks: a first small one (a clip has a few segments, so 4x the
    # results wanted usually suffice: 0.6 ms instead of 6 ms of SQL for 512 rows), then larger ones
    step = max(64, 4 * want) if not filters.active() else 512
    i = 0
    while i < len(cands):
        block = cands[i:i + step]
        i += step
        step = 512
        rows = lib.segment_rows([c.segment_id for c in block])
        for c in block:
            row = rows.get(c.segment_id)
            if row is None or row["clip_id"] in seen or not filters.keep(row):
                continue
            seen.add(row["clip_id"])
            out.append(_result(row, c))
            if chosen is not None:
                chosen.append(c)
            if len(out) >= want:
                break
        if len(out) >= want:
            break
    if chosen is not None:
        chosen[:] = chosen[k * (page - 1):]
    _relevance_falls_with_rank(out)
    return out[k * (page - 1):]


def _relevance_falls_with_rank(results: list[dict]) -> None:
    """Make the relevances shown non-increasing down the ranking (pages 1..page, one clip each): where the
    ranking is not ordered by the relevance model (the default fused text mode ranks by reciprocal rank over
    the linguistic mode and the joint space, which that model does not read), a run of results that the two
    disagree on shares its mean chance (`calibration.non_increasing`), instead of showing 0.27 above 0.43."""
    shown = [r for r in results if r["relevance"] is not None]
    if len(shown) > 1:
        for r, v in zip(shown, calibration.non_increasing([r["relevance"] for r in shown]).tolist()):
            r["relevance"] = round(v, 4)


def _result(row: dict, c: Candidate) -> dict:
    parts = {k: round(float(v), 4) for k, v in c.parts.items()}  # "scores": the same, under its first name
    return {"clip_id": row["clip_id"], "segment_id": c.segment_id, "source": row["webpage_url"] or row["source_uri"],
            "title": row["title"], "start": round(row["start"], 3), "end": round(row["end"], 3),
            "duration": row["duration"], "score": round(float(c.score), 4),
            "relevance": None if c.relevance is None else round(float(c.relevance), 4), "parts": parts,
            "labels": specific_labels(row["labels"]), "explanation": c.explain(), "scores": parts,
            "media_url": f"/media/{row['clip_id']}"}


def nearest_segments(store, queries: np.ndarray, n: int) -> list[tuple[int, float]]:
    """k-NN for several query vectors (the windows of an audio query); a segment keeps its best
    cosine to any of them. Returns up to `n` (segment id, score), best first."""
    scores, ids = store.search(queries, n)
    s, i = np.asarray(scores).reshape(-1), np.asarray(ids).reshape(-1)
    ok = (i >= 0) & (s > -2.0)  # a missing neighbour (id -1, score -inf) is no result
    s, i = s[ok], i[ok]
    if not i.size:
        return []
    by_id = np.argsort(i, kind="stable")  # each id's hits together, in the order the queries found them
    firsts = np.flatnonzero(np.r_[True, i[by_id][1:] != i[by_id][:-1]])
    best = np.maximum.reduceat(s[by_id], firsts)  # a segment's best cosine to any query window
    seen = by_id[firsts]  # where each segment was first found: ties keep that order (best first, stable)
    top = np.lexsort((seen, -best))[:n]
    return list(zip(i[by_id][firsts][top].tolist(), best[top].astype(np.float64).tolist()))


def top_labels(probs: np.ndarray, labels: list[str], n: int = 5) -> list[dict]:
    order = np.argsort(-probs)[:n]
    return [{"label": labels[j], "prob": round(float(probs[j]), 4)} for j in order]
