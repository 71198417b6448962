"""Reader: register what the sources discover in the crawl table, and fetch due items to local files."""
from __future__ import annotations

import time
from pathlib import Path

from nels.sources import state
from nels.sources.source import Fetched, Item, Source
from nels.errors import SourceError


def discover(conn, sources: list[Source]) -> tuple[dict[int, Source], list[tuple[str, str]]]:
    """Register every source's items. Returns item id -> its source, and (target, error) for sources
    whose listing failed (a yt-dlp search that errored, an unreadable URL list...)."""
    owner: dict[int, Source] = {}
    errors: list[tuple[str, str]] = []
    for src in sources:
        try:
            for item in src.items():
                (iid,) = state.register(conn, [item])
                owner[iid] = src
        except SourceError as exc:
            errors.append((getattr(src, "kind", "source"), str(exc)))
    return owner, errors


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


def fetch(source: Source, row, workdir: Path, limiter: RateLimiter) -> Fetched:
    item = Item(row["uri"], row["kind"], query=row["query"], title=row["title"], uploader=row["uploader"],
                duration=row["duration"], licence=row["licence"], webpage_url=row["webpage_url"])
    if row["kind"] != "file":
        limiter.wait()
    return source.fetch(item, workdir)
