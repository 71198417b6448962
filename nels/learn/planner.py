"""The crawl planner of `nels run`: which queries to search this cycle, and how politely.

Queries per class (`class_queries`): its display name, its first synonyms and the first clause of its
description from the vocabulary (`nels/data/vocabulary.json`, or a model's own), plus the queries an
admin gave a class accepted from the query log. They are recorded in the catalogue (`crawl_queries`).

Budget (`plan`): `per_cycle` results in all, shared among classes by weight
    w_k = (1 - AP_k) + 1 / (1 + pool_k)
(AP_k: the class's held-out AP under the serving model, 0.5 when unknown; pool_k: clips its queries found
so far), so the classes recognised worst and those with the fewest clips get the most. Within a class the
queries run least often go first.

Politeness: `HostLimiter` (at most `per_second` requests per host, per process), `in_quiet_hours`, and the
caps (`--max-hours` of audio, `--max-gb` of media) checked by the loop; fetch retries with exponential
backoff are the catalogue's (`Catalogue.mark_failed`).
"""
from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

DEFAULT_VOCABULARY = Path(__file__).resolve().parent.parent / "data" / "vocabulary.json"


def vocabulary_entries(path: Path | None = None) -> dict[str, dict]:
    """label -> {name, description, synonyms} of a vocabulary file (empty when there is none)."""
    try:
        return json.loads(Path(path or DEFAULT_VOCABULARY).read_text()).get("classes", {})
    except (OSError, ValueError):
        return {}


def class_queries(label: str, entry: dict | None = None, synonyms: int = 2) -> list[tuple[str, str]]:
    """(query, origin) for one class: name, the first `synonyms` synonyms, the description's first clause."""
    entry = entry or {}
    out = [(entry.get("name") or label.replace("_", " "), "name")]
    out += [(s, "synonym") for s in (entry.get("synonyms") or [])[:synonyms]]
    desc = (entry.get("description") or "").split(":")[0].split(".")[0].strip()
    if desc and len(desc.split()) <= 8:
        out.append((desc, "description"))
    seen, uniq = set(), []
    for q, origin in out:
        key = " ".join(q.lower().split())
        if key and key not in seen:
            seen.add(key)
            uniq.append((key, origin))
    return uniq


def ensure_queries(catalogue, labels: list[str], vocabulary: dict[str, dict] | None = None) -> None:
    """Record the queries of every class that has none yet."""
    vocab = vocabulary_entries() if vocabulary is None else vocabulary
    have = {q["label"] for q in catalogue.crawl_queries()}
    for label in labels:
        if label not in have:
            for q, origin in class_queries(label, vocab.get(label)):
                catalogue.add_crawl_query(q, label, origin)


def class_weights(labels: list[str], ap: dict[str, float | None], pool: dict[str, int]) -> dict[str, float]:
    """w_k = (1 - AP_k) + 1 / (1 + pool_k) (AP 0.5 when unknown)."""
    out = {}
    for k in labels:
        a = ap.get(k)
        a = 0.5 if a is None or (isinstance(a, float) and math.isnan(a)) else a
        out[k] = (1.0 - a) + 1.0 / (1.0 + pool.get(k, 0))
    return out


def allocate(weights: dict[str, float], budget: int) -> dict[str, int]:
    """Split `budget` results among classes in proportion to their weights (largest remainders), every class
    at least one while the budget lasts (heaviest first)."""
    if not weights or budget <= 0:
        return {k: 0 for k in weights}
    order = sorted(weights, key=lambda k: -weights[k])
    if budget <= len(order):
        return {k: int(i < budget) for i, k in enumerate(order)}
    total = sum(weights.values()) or 1.0
    rest = budget - len(order)
    share = {k: rest * weights[k] / total for k in order}
    out = {k: 1 + int(share[k]) for k in order}
    left = budget - sum(out.values())
    for k in sorted(order, key=lambda k: -(share[k] - int(share[k])))[:left]:
        out[k] += 1
    return out


@dataclass
class PlannedQuery:
    query: str
    label: str
    n: int  # results wanted

    def to_list(self) -> list:
        return [self.query, self.label, self.n]


def plan(catalogue, labels: list[str], ap: dict[str, float | None], per_cycle: int,
         per_query_max: int = 10) -> list[PlannedQuery]:
    """This cycle's queries: each class's budget goes to its least-run queries, at most `per_query_max` each."""
    queries: dict[str, list[dict]] = {}
    for q in catalogue.crawl_queries():
        queries.setdefault(q["label"], []).append(q)
    found = catalogue.clips_by_query()
    pool = {k: sum(len(found.get(q["query"], [])) for q in queries.get(k, [])) for k in labels}
    budget = allocate(class_weights([k for k in labels if queries.get(k)], ap, pool), per_cycle)
    out = []
    for label, n in budget.items():
        for q in sorted(queries[label], key=lambda q: (q["runs"], q["query"])):
            if n <= 0:
                break
            take = min(n, per_query_max)
            # a query already run asks for more results than before (the first ones are known)
            out.append(PlannedQuery(q["query"], label, take + q["found"]))
            n -= take
    return out


class HostLimiter:
    """At most `per_second` requests to one host (None or 0: unlimited), shared by the threads of a process."""

    def __init__(self, per_second: float | None):
        self.interval = 1.0 / per_second if per_second else 0.0
        self.next_at: dict[str, float] = {}
        self.lock = threading.Lock()

    def wait(self, url: str) -> float:
        """Sleep until `url`'s host may be asked again; returns the seconds slept."""
        if not self.interval:
            return 0.0
        host = urlparse(url).hostname or url
        with self.lock:
            now = time.monotonic()
            at = max(now, self.next_at.get(host, 0.0))
            self.next_at[host] = at + self.interval
        if at > now:
            time.sleep(at - now)
        return max(0.0, at - now)


def parse_quiet_hours(spec: str | None) -> tuple[int, int] | None:
    """"22-6" -> (22, 6): local hours [start, end) with no crawling (None/"": never quiet)."""
    if not spec:
        return None
    try:
        a, b = (int(x) for x in spec.split("-"))
    except ValueError:
        raise ValueError(f"quiet hours {spec!r}: expected START-END in whole hours, e.g. 22-6") from None
    if not (0 <= a < 24 and 0 <= b <= 24):
        raise ValueError(f"quiet hours {spec!r}: hours are 0..24")
    return a, b


def in_quiet_hours(quiet: tuple[int, int] | None, hour: int | None = None) -> bool:
    if quiet is None:
        return False
    h = time.localtime().tm_hour if hour is None else hour
    a, b = quiet
    return a <= h < b if a <= b else (h >= a or h < b)
