"""Linguistic search: rank audio segments by how well their recognised labels match the words of a query.

A query is compared with each label's phrases (`nels.encoders.text.LabelSpace`), the similarities become a few
sharpened label weights, and a segment scores the class probability it puts on those labels. This finds
what the classifier knows by any wording, but only what it knows, and only as well as words track sounds
("car brakes" is worded like "car horn" but sounds like a squeal): acoustic and joint search cover that.

Defaults were chosen by reasoning about MiniLM cosines, not tuned on any evaluation set (see label_weights).

Hierarchy: the similarities and weights may be over *concepts* rather than the model's labels
(`nels.encoders.concepts.ConceptSpace`: "animal" is a concept covering the labels dog, cow, ...). Then
`members` (n_concepts, n_labels) bool says what each concept covers, and a segment scores
sum_c w_c * max(p_l for l in members[c]): a concept is as present as its most probable member. Without
`members` (or with the identity) this is the plain weights @ probs.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

DEFAULT_TEMPERATURE = 0.05
DEFAULT_TOP = 3


def label_weights(sims: np.ndarray, temperature: float = DEFAULT_TEMPERATURE, top: int = DEFAULT_TOP,
                  min_similarity: float | None = None) -> np.ndarray:
    """Query-label similarities -> one weight per label (non-negative, summing to 1 per query).

    sims : (n_labels,) or (n_queries, n_labels) cosine similarities (LabelSpace.similarity).
    temperature : softmax temperature over the similarities. all-MiniLM-L6-v2 puts a query near its label
        at ~0.5-0.8 and unrelated labels at ~0-0.3, while genuinely close labels ("rain" vs "thunderstorm")
        differ by a few hundredths. At 0.05, a gap of 0.05 weighs e (2.7x) and 0.15 weighs e^3 (20x): near
        ties share the weight (hedging between confusable classes), clear losers vanish.
    top : keep only the `top` most similar labels (the rest get 0). A query names one sound, rarely more
        than two or three, and a long tail of small weights would let every segment's stray probability
        mass add up to a score. 0 or None keeps all.
    min_similarity : labels below this cosine get 0 weight; if none is left the weights are all 0 (the caller
        can then say that no label matches). None (default) always keeps the best label: a weak match is
        still the best linguistic guess, and the explanation shows its similarity.
    """
    s = np.asarray(sims, dtype=np.float64)
    one = s.ndim == 1
    if one:
        s = s[None]
    if s.ndim != 2 or s.shape[1] == 0:
        raise ValueError(f"sims must be (n_labels,) or (n_queries, n_labels), got {np.shape(sims)}")
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    keep = np.ones_like(s, dtype=bool)
    if top and top < s.shape[1]:
        kth = np.sort(s, axis=1)[:, -top][:, None]
        keep &= s >= kth  # ties at the cut keep all tied labels
    if min_similarity is not None:
        keep &= s >= min_similarity
    z = np.where(keep, s / temperature, -np.inf)
    zmax = z.max(axis=1, keepdims=True)
    e = np.where(keep, np.exp(z - np.where(np.isfinite(zmax), zmax, 0.0)), 0.0)
    tot = e.sum(axis=1, keepdims=True)
    w = np.divide(e, tot, out=np.zeros_like(e), where=tot > 0).astype(np.float32)
    return w[0] if one else w


def score(weights: np.ndarray, probs: np.ndarray, members: np.ndarray | None = None) -> np.ndarray:
    """Score segments by the class probability they put on the query's labels (or concepts).

    weights : (n_labels,) from label_weights; with `members`, (n_concepts,).
    probs : (n_segments, n_labels) class probabilities, columns index-aligned with the model's labels.
    members : None, or (n_concepts, n_labels) bool: the labels each concept covers (see the module docstring).
    Returns (n_segments,) float32 = probs @ weights without members, else sum_c w_c * max(probs[:, members[c]]):
    in [0, 1] when the weights sum to 1 and probs are in [0, 1]; higher first.
    """
    w = np.asarray(weights, dtype=np.float32)
    p = np.asarray(probs, dtype=np.float32)
    if w.ndim != 1:
        raise ValueError(f"weights must be (n_labels,), got {w.shape}")
    if members is None:
        if p.ndim != 2 or p.shape[1] != w.shape[0]:
            raise ValueError(f"probs must be (n_segments, {w.shape[0]}), got {p.shape}")
        return p @ w
    m = np.asarray(members, dtype=bool)
    if m.shape[0] != w.shape[0] or p.ndim != 2 or p.shape[1] != m.shape[1]:
        raise ValueError(f"members must be (n_concepts={w.shape[0]}, n_labels) and probs (n_segments, n_labels);"
                         f" got members {m.shape}, probs {p.shape}")
    out = np.zeros(p.shape[0], dtype=np.float32)
    for c in np.flatnonzero(w > 0):
        out += w[c] * concept_probs(p, m[c])
    return out


def concept_probs(probs: np.ndarray, member_row: np.ndarray) -> np.ndarray:
    """(n_segments,) the largest probability among the labels a concept covers (0 when it covers none)."""
    cols = np.flatnonzero(member_row)
    if len(cols) == 0:
        return np.zeros(probs.shape[0], dtype=np.float32)
    if len(cols) == 1:
        return probs[:, cols[0]]
    return probs[:, cols].max(axis=1)


def explain(query: str, sims: np.ndarray, phrases: Sequence[str], probs_row: np.ndarray, labels: Sequence[str],
            names: Sequence[str] | None = None, temperature: float = DEFAULT_TEMPERATURE,
            top: int = DEFAULT_TOP, members: np.ndarray | None = None,
            concept_names: Sequence[str] | None = None) -> str:
    """Why one segment matched a query, e.g. "matches 'sea waves' (similarity 0.71 to 'ocean surf'), p=0.93".

    query : the query text (quoted when nothing matches).
    sims : (n_labels,) this query's label similarities; phrases : the phrase that matched per label
        (both from LabelSpace.similarity).
    probs_row : (n_labels,) the segment's class probabilities.
    labels : class labels; names : their display names (LabelSpace.names), default labels with spaces.
    The label named is the one contributing most to score() under the same temperature/top.
    members, concept_names : with concepts (sims and phrases per concept), what each covers and its name;
        e.g. "matches 'Animal' (similarity 0.93 to 'animals'): 'dog', p=0.91".
    """
    sims = np.asarray(sims, dtype=np.float32)
    probs_row = np.asarray(probs_row, dtype=np.float32)
    names = list(names) if names is not None else [l.replace("_", " ") for l in labels]
    if members is not None:
        w = label_weights(sims, temperature=temperature, top=top)
        nz = np.flatnonzero(w > 0)  # a few concepts: explaining stays cheap with hundreds of them
        cp = np.where(np.asarray(members, dtype=bool)[nz], probs_row[None, :], -1.0)
        contrib = w[nz] * np.maximum(cp.max(axis=1), 0)
        if len(nz) == 0 or contrib.max() <= 0:
            return f"no recognised sound matches {query!r}"
        k = int(contrib.argmax())
        c, best = int(nz[k]), cp[k].argmax()
        cname = (list(concept_names) if concept_names is not None else names)[c]
        phrase = phrases[c]
        if len(phrase) > 60:
            phrase = phrase[:57].rstrip() + "..."
        via = "" if phrase.lower() == cname.lower() else f" to '{phrase}'"
        lab = int(best)
        what = "" if names[lab].lower() == cname.lower() else f": '{names[lab]}'"
        return f"matches '{cname}' (similarity {sims[c]:.2f}{via}){what}, p={probs_row[lab]:.2f}"
    contrib = label_weights(sims, temperature=temperature, top=top) * probs_row
    i = int(contrib.argmax())
    if contrib[i] <= 0:
        return f"no recognised sound matches {query!r}"
    phrase = phrases[i]
    if len(phrase) > 60:
        phrase = phrase[:57].rstrip() + "..."
    via = "" if phrase.lower() == names[i].lower() else f" to '{phrase}'"
    return f"matches '{names[i]}' (similarity {sims[i]:.2f}{via}), p={probs_row[i]:.2f}"


ORDER_DEPTH = 4096


def label_order(probs: np.ndarray, depth: int | None = None) -> np.ndarray:
    """Per label, the rows of `probs` with the highest probability for it, best first.

    probs : (n_segments, n_labels) class probabilities.
    depth : how many rows to keep per label (all when there are fewer). Default: 4096, or 1 % of the
        segments when that is more (a large library holds more near-duplicates of its best examples,
        and a list too short to decide makes `top_segments` score everything). 10k rows x 50 labels =
        2 MB at 1M segments.
    Returns (n_labels, min(depth, n_segments)) int32 row indices: the index `top_segments` walks.
    """
    p = np.asarray(probs, dtype=np.float32)
    n = p.shape[0]
    d = min(depth if depth is not None else max(ORDER_DEPTH, n // 100), n)
    if d == 0:
        return np.zeros((p.shape[1], 0), dtype=np.int32)
    out = np.empty((p.shape[1], d), dtype=np.int32)
    for c in range(p.shape[1]):
        col = p[:, c]
        part = np.argpartition(-col, d - 1)[:d] if d < n else np.arange(n)
        out[c] = part[np.argsort(-col[part], kind="stable")]
    return out


def top_segments(weights: np.ndarray, probs: np.ndarray, n: int, order: np.ndarray | None = None,
                 members: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The `n` best rows by score(weights, probs), best first, with their scores (zero scores dropped).

    Exact, and at library scale much cheaper than scoring every segment: a query's weights are non-zero
    on a few labels only (label_weights keeps `top`), so the threshold algorithm (Fagin, Lotem and Naor)
    walks those labels' best-first lists (`order`, from label_order) until no unseen segment can beat
    the n-th best seen one (an unseen row has at most the current depth's probability on every label).
    Falls back to scoring every row when the lists are too short to decide, or when `order` is None.
    With `members` (concept weights, see `score`) the lists walked are those of every label the weighted
    concepts cover, and the bound is sum_c w_c * max over c's labels of their list's current depth.
    """
    if members is not None:
        return _top_segments_concepts(weights, probs, n, order, members)
    w = np.asarray(weights, dtype=np.float32)
    p = np.asarray(probs, dtype=np.float32)
    total = p.shape[0]
    nz = np.flatnonzero(w > 0)
    if n <= 0 or total == 0 or len(nz) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    wz = w[nz]
    if order is not None and order.shape[1] > 0 and order.shape[1] < total and n < order.shape[1]:
        d_max = order.shape[1]
        depth = min(d_max, max(4 * n, 256))
        while True:
            rows = np.unique(order[nz, :depth])
            s = p[rows[:, None], nz] @ wz  # only the query's columns of those rows (not whole rows: 521 classes)
            bound = float(p[order[nz, depth - 1], nz] @ wz)  # the best an unseen row can score
            if len(rows) >= n:
                kth = np.partition(s, len(s) - n)[len(s) - n]
                if kth >= bound:
                    top = np.argsort(-s, kind="stable")[:n]
                    keep = s[top] > 0
                    return rows[top][keep].astype(np.int64), s[top][keep]
            if depth == d_max:
                break  # undecided within the lists: score everything
            depth = min(d_max, depth * 4)
    s = score(w, p)
    top = np.argpartition(-s, n - 1)[:n] if n < total else np.arange(total)
    top = top[np.argsort(-s[top], kind="stable")]
    keep = s[top] > 0
    return top[keep], s[top][keep]


def _top_segments_concepts(weights, probs, n, order, members):
    w = np.asarray(weights, dtype=np.float32)
    p = np.asarray(probs, dtype=np.float32)
    m = np.asarray(members, dtype=bool)
    total = p.shape[0]
    nz = np.flatnonzero(w > 0)
    if n <= 0 or total == 0 or len(nz) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    groups = [np.flatnonzero(m[c]) for c in nz]
    keep = [i for i, g in enumerate(groups) if len(g)]
    nz, groups = nz[keep], [groups[i] for i in keep]
    if len(nz) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    wz = w[nz]
    cols = np.unique(np.concatenate(groups))
    pos = {c: i for i, c in enumerate(cols.tolist())}
    local = [np.array([pos[c] for c in g.tolist()]) for g in groups]

    def scores(rows):  # rows None: every row
        # only the columns the query's concepts cover, not whole rows (a label-major matrix reads them in order)
        sub = p[:, cols] if rows is None else p[rows[:, None], cols]
        return sum(wc * sub[:, g].max(axis=1) for wc, g in zip(wz, local))

    if order is not None and order.shape[1] > 0 and order.shape[1] < total and n < order.shape[1]:
        d_max = order.shape[1]
        depth = min(d_max, max(4 * n, 256))
        while True:
            rows = np.unique(order[cols, :depth])
            s = scores(rows)
            at_depth = p[order[cols, depth - 1], cols]  # each list's probability at the current depth
            bound = float(sum(wc * at_depth[g].max() for wc, g in zip(wz, local)))
            if len(rows) >= n:
                kth = np.partition(s, len(s) - n)[len(s) - n]
                if kth >= bound:
                    top = np.argsort(-s, kind="stable")[:n]
                    ok = s[top] > 0
                    return rows[top][ok].astype(np.int64), s[top][ok].astype(np.float32)
            if depth == d_max:
                break
            depth = min(d_max, depth * 4)
    s = np.asarray(scores(None), dtype=np.float32)
    top = np.argpartition(-s, n - 1)[:n] if n < total else np.arange(total)
    top = top[np.argsort(-s[top], kind="stable")]
    ok = s[top] > 0
    return top[ok], s[top][ok]
