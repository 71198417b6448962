"""The crawl planner of `nels run`: which queries to search this cycle, and how politely.

Queries per class (`class_queries`): its display name, its first synonyms and the first clause of its
description from the vocabulary (`nels/data/vocabulary.json`, or a model's own), plus the queries an
admin gave a class accepted from the query log. They are recorded in the catalogue (`crawl_queries`).

Budget (`plan`): `per_cycle` results in all, shared among classes by weight
    w_k = (1 - AP_k) + 1 / (1 + pool_k)
(AP_k: the class's held-out AP under the serving model, 0.5 when unknown; pool_k: clips its queries found
so far), so the classes recognised worst and those with the fewest clips get the most. Within a class the
queries run least often go first.

Seed URLs (`seed_urls`): for a class that is an AudioSet class (its name or a synonym, or an ESC-50 class
through nels/data/audioset/esc50_links.json), the ontology's positive-example videos
(nels/data/audioset/examples.json, derived from the ontology by `build_examples`), plus any a user gives
(`nels run --seed-urls FILE`). Each is recorded as a crawl query of origin "example" and planned once, from the
class's budget (at most half of it while the class has search queries too); the crawl step registers it as an
item, so a URL that cannot be fetched (on a machine without YouTube, a removed video) fails through the crawl
table's retries with backoff, is recorded there with its error, and is never planned again.

Politeness: `HostLimiter` (at most `per_second` requests per host, per process), `in_quiet_hours`, and the
caps (`--max-hours` of audio, `--max-gb` of media) checked by the loop; fetch retries with exponential
backoff are the catalogue's (`Catalogue.mark_failed`).
"""
from __future__ import annotations

import functools
import json
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable
from urllib.parse import urlparse

from nels.errors import NelsError

DATA = Path(__file__).resolve().parent.parent / "data"
DEFAULT_VOCABULARY = DATA / "vocabulary.json"
AUDIOSET_EXAMPLES = DATA / "audioset" / "examples.json"
SEED = "example"  # crawl_queries.origin of a seed URL
EXAMPLES_LICENCE = ("CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/): derived from the AudioSet ontology"
                    " by Google Inc.; changes: of each class only its name and positive examples are kept (as the"
                    " ontology writes them). Share alike: see nels/data/audioset/LICENSE.md")


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


# -- seed URLs: the AudioSet ontology's positive examples, and a user's own ---------------------------------------
def example_url(example: str) -> str:
    """The ontology's "youtu.be/ID?start=30&end=40" as a URL (https added; the labelled 10 s stay in the query)."""
    example = example.strip()
    return example if "://" in example else "https://" + example


def build_examples(ontology: str | os.PathLike | list) -> dict:
    """The table shipped as nels/data/audioset/examples.json from the ontology (its ontology.json or its parsed
    list): AudioSet class name -> its positive examples as the ontology writes them, for the classes with any."""
    from nels.encoders.audioset import SOURCE

    rows = ontology if isinstance(ontology, list) else json.loads(Path(ontology).read_text(encoding="utf-8"))
    classes = {r["name"]: list(r.get("positive_examples") or []) for r in rows}
    return {"source": SOURCE, "licence": EXAMPLES_LICENCE, "generated_by": "nels.learn.planner.build_examples",
            "classes": {k: v for k, v in classes.items() if v}}


def write_examples(ontology: str | os.PathLike, out: str | os.PathLike = AUDIOSET_EXAMPLES) -> Path:
    """Write `build_examples` as JSON, one class a line."""
    t = build_examples(ontology)
    head = ",\n".join(f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in t.items() if k != "classes")
    body = ",\n".join(f"  {json.dumps(k, ensure_ascii=False)}: {json.dumps(v)}" for k, v in t["classes"].items())
    Path(out).write_text("{\n" + head + ',\n "classes": {\n' + body + "\n }\n}\n", encoding="utf-8")
    return Path(out)


@functools.lru_cache(maxsize=4)
def audioset_examples(path: str | None = None) -> dict[str, tuple[str, ...]]:
    """AudioSet class name -> positive-example URLs (the shipped table unless `path`; empty when unreadable)."""
    try:
        raw = json.loads(Path(path or AUDIOSET_EXAMPLES).read_text(encoding="utf-8"))["classes"]
        return {k: tuple(example_url(u) for u in v) for k, v in raw.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _norm(s: str) -> str:
    return " ".join(s.replace("_", " ").lower().split())


def audioset_classes(label: str, names: Iterable[str], links: dict[str, Iterable[str]] | None = None) -> list[str]:
    """The AudioSet classes (of `names`) that class `label` of the loop stands for: those `links` gives it (ESC-50
    label -> AudioSet classes), else the one whose name or one of its comma-separated synonyms is the label
    (case, spaces and underscores ignored): "whistle" -> Whistle, "beep" -> "Beep, bleep", "dog" -> Dog, Bark."""
    from nels.encoders.audioset import name_synonyms

    names = list(names)
    linked = [n for n in (links or {}).get(label, ()) if n in names]
    if linked:
        return linked
    key = _norm(label)
    return [n for n in names if key == _norm(n) or key in {_norm(s) for s in name_synonyms(n)}][:1]


def seed_urls(labels: Iterable[str], examples: dict[str, Iterable[str]] | None = None,
              links: dict[str, Iterable[str]] | None = None, extra: dict[str, Iterable[str]] | None = None,
              ) -> dict[str, list[str]]:
    """label -> its seed URLs: the user's own (`extra`) first, then the positive examples of its AudioSet classes
    (`examples`: the shipped table when None; taken in turn from each class, so "dog" alternates Dog and Bark).
    `links`: ESC-50 label -> AudioSet classes (the shipped esc50_links.json when None)."""
    if examples is None:
        examples = audioset_examples()
    if links is None:
        from nels.encoders.audioset import load_links
        from nels.encoders.text import VocabularyError

        try:
            links = load_links()
        except VocabularyError:
            links = {}
    out = {}
    for label in labels:
        lists = [list(examples[c]) for c in audioset_classes(label, examples, links)]
        urls = list((extra or {}).get(label, ()))
        urls += [u for round_ in zip(*lists) for u in round_] if lists else []
        urls += [u for lst in lists for u in lst[min(map(len, lists)):]] if lists else []
        urls = list(dict.fromkeys(u.strip() for u in urls if isinstance(u, str) and u.strip()))
        if urls:
            out[label] = urls
    return out


def read_seed_file(path: str | os.PathLike) -> dict[str, list[str]]:
    """A user's seed URLs: a JSON object {class: [URL, ...]}."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise NelsError(f"seed URLs {path}: {exc}") from None
    if not isinstance(raw, dict) or not all(isinstance(v, list) for v in raw.values()):
        raise NelsError(f"seed URLs {path}: expected a JSON object {{class: [URL, ...]}}")
    bad = [u for v in raw.values() for u in v if not (isinstance(u, str) and urlparse(u).scheme in ("http", "https"))]
    if bad:
        raise NelsError(f"seed URLs {path}: not http(s) URLs: {', '.join(map(str, bad[:3]))}")
    return raw


def ensure_seeds(catalogue, seeds: dict[str, list[str]]) -> int:
    """Record seed URLs as crawl queries of origin "example" (one already recorded keeps its class). Returns how
    many the catalogue holds for these classes."""
    have = {q["query"] for q in catalogue.crawl_queries()}
    for label, urls in seeds.items():
        for u in urls:
            if u not in have:
                catalogue.add_crawl_query(u, label, SEED)
    return sum(1 for q in catalogue.crawl_queries() if q["origin"] == SEED and q["label"] in seeds)


def primary_queries(catalogue) -> dict[str, str]:
    """label -> the search query that stands for it (its name, else its first search query): the query a seed
    URL's item is filed under, so its clip counts in the class's pool and text."""
    out: dict[str, str] = {}
    for q in sorted(catalogue.crawl_queries(), key=lambda q: (q["origin"] != "name", q["query"])):
        if q["origin"] != SEED:
            out.setdefault(q["label"], q["query"])
    return out


@dataclass
class PlannedQuery:
    query: str  # a search query, or a seed URL
    label: str
    n: int  # results wanted
    kind: str = "search"  # or "url": a seed URL, registered as it is

    def to_list(self) -> list:
        return [self.query, self.label, self.n, self.kind]


def plan(catalogue, labels: list[str], ap: dict[str, float | None], per_cycle: int,
         per_query_max: int = 10, seeds: dict[str, list[str]] | None = None) -> list[PlannedQuery]:
    """This cycle's queries: each class's budget goes first to seed URLs never planned (at most half of it while
    the class also has search queries; in the order of `seeds`, label -> URLs, when given), then to its least-run
    search queries, at most `per_query_max` each."""
    rank = {u: i for urls in (seeds or {}).values() for i, u in enumerate(urls)}
    queries: dict[str, list[dict]] = {}
    for q in catalogue.crawl_queries():
        queries.setdefault(q["label"], []).append(q)
    found = catalogue.clips_by_query()
    pool = {k: sum(len(found.get(q["query"], [])) for q in queries.get(k, [])) for k in labels}
    budget = allocate(class_weights([k for k in labels if queries.get(k)], ap, pool), per_cycle)
    out = []
    for label, n in budget.items():
        searches = [q for q in queries[label] if q["origin"] != SEED]
        fresh = sorted((q["query"] for q in queries[label] if q["origin"] == SEED and q["runs"] == 0
                        and (seeds is None or q["query"] in rank)),
                       key=lambda u: (rank.get(u, len(rank)), u))
        take = min(len(fresh), (max(1, n // 2) if searches else n) if n > 0 else 0)
        out += [PlannedQuery(u, label, 1, "url") for u in fresh[:take]]
        n -= take
        for q in sorted(searches, key=lambda q: (q["runs"], q["query"])):
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
