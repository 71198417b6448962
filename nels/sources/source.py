"""The Source seam: discovery (`items`) and fetching (`fetch`) of audio, with provenance.

Sources: `LocalSource` (files/folders), `HttpSource` (direct URLs), `YtDlpSource` (YouTube search,
video/playlist URLs, and web pages through yt-dlp's generic extractor). `nels.sources.route`
routes what a user typed to the right one.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol
from urllib.parse import urlparse

AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".webm", ".mp4", ".mkv",
                    ".wma", ".aif", ".aiff", ".caf", ".amr", ".3gp", ".mov", ".avi"}
URL_LIST_EXTENSIONS = {".txt", ".urls", ".lst", ".list"}


@dataclass
class Item:
    """One thing to fetch. `uri` is its identity in the crawl table (absolute path or URL)."""

    uri: str
    kind: str  # file | url | ytdlp
    query: str | None = None
    title: str | None = None
    uploader: str | None = None
    duration: float | None = None
    licence: str | None = None
    webpage_url: str | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class Fetched:
    """A fetched item: a local file plus what the fetch learnt (title, duration...)."""

    path: Path
    owned: bool  # True: a temp file the pipeline may move/delete; False: the user's own file
    provenance: dict


class Source(Protocol):
    kind: str

    def items(self) -> Iterator[Item]:
        """Discover items (cheap: no audio is downloaded here)."""
        ...

    def fetch(self, item: Item, workdir: Path) -> Fetched:
        """Bring one item to a local file (raises SourceError with a clear message)."""
        ...


def is_url(s: str) -> bool:
    return s.split(":", 1)[0].lower() in ("http", "https") and ":" in s


def is_ytdlp_target(s: str) -> bool:
    if s.startswith(("ytsearch", "ytdl:")):
        return True
    try:
        host = (urlparse(s).hostname or "").lower()
    except ValueError:  # a malformed URL ("http://[::1"): a plain URL, whose fetch says what is wrong
        return False
    return host.endswith(("youtube.com", "youtu.be", "soundcloud.com", "vimeo.com", "bandcamp.com", "freesound.org"))


def provenance_of(item: Item) -> dict:
    return {"source_uri": item.uri, "source_kind": item.kind, "title": item.title, "uploader": item.uploader,
            "licence": item.licence, "query": item.query, "webpage_url": item.webpage_url or
            (item.uri if is_url(item.uri) else None), "fetched_at": time.time(), **item.extra}


class LocalSource:
    """Audio files, and folders searched recursively for audio/video extensions."""

    kind = "file"

    def __init__(self, paths: list[str | os.PathLike]):
        self.paths = [Path(p).expanduser() for p in paths]

    def items(self) -> Iterator[Item]:
        for p in self.paths:
            if p.is_dir():
                for f in sorted(p.rglob("*")):
                    if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS:
                        yield Item(str(f.resolve()), "file", title=f.name)
            else:  # a file (even with an unknown extension: decoding decides), or a missing path
                yield Item(str(p.resolve()), "file", title=p.name)

    def fetch(self, item: Item, workdir: Path) -> Fetched:
        from nels.errors import SourceError

        p = Path(item.uri)
        if not p.is_file():
            raise SourceError(f"{p}: no such file")
        return Fetched(p, False, provenance_of(item))


def read_url_list(path: Path) -> list[str]:
    """URLs (or yt-dlp targets) from a text file, one per line; blank lines and # comments ignored."""
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def looks_like_url_list(p: Path) -> bool:
    if p.suffix.lower() in URL_LIST_EXTENSIONS:
        return True
    try:
        head = p.open("rb").read(256)
    except OSError:
        return False
    return head.lstrip().startswith((b"http://", b"https://", b"#"))
