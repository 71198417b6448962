"""Reader: register what the sources discover in the crawl table, and list the items due now."""
from __future__ import annotations

import time

from nels.ingest.mapper import Work
from nels.sources.source import Item, Source
from nels.errors import SourceError


def discover(catalogue, sources: list[Source]) -> tuple[dict[int, Source], list[tuple[str, str]]]:
    """Register every source's items. Returns item id -> its source, and (target, error) for sources
    whose listing failed (a yt-dlp search that errored, an unreadable URL list...)."""
    owner: dict[int, Source] = {}
    errors: list[tuple[str, str]] = []
    for src in sources:
        try:
            for item in src.items():
                (iid,) = catalogue.register_items([item])
                owner[iid] = src
        except SourceError as exc:
            errors.append((getattr(src, "kind", "source"), str(exc)))
    return owner, errors


def due_work(catalogue, ids: list[int], retries: int) -> list[Work]:
    """The items among `ids` to work on now (pending, or failed with attempts left and backoff over)."""
    return [Work(r["id"], Item(r["uri"], r["kind"], query=r["query"], title=r["title"], uploader=r["uploader"],
                               duration=r["duration"], licence=r["licence"], webpage_url=r["webpage_url"]),
                 r["attempts"])
            for r in catalogue.due_items(ids, retries)]


class RateLimiter:
    """At most `per_second` fetches per second (None: unlimited)."""

    def __init__(self, per_second: float | None):
        self.interval = 1.0 / per_second if per_second else 0.0
        self.last = 0.0

    def wait(self) -> None:
        if self.interval:
            delay = self.last + self.interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.last = time.monotonic()
