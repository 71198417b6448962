"""yt-dlp: YouTube search queries, video and playlist URLs, and any page its generic extractor reads.

Discovery runs yt-dlp with `extract_flat` (metadata only); fetching downloads the best audio-only
format without post-processing (no ffmpeg needed: PyAV decodes webm/m4a/opus directly).
`NELS_YTDLP_SEARCH` (a URL template with {query} and {n}) replaces YouTube search, so the whole
crawl path can run against a local server in tests and air-gapped installs.
"""
from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import quote_plus

from nels import config
from nels.sources.guard import check_public_url
from nels.sources.guardproxy import GuardProxy
from nels.sources.source import Fetched, Item, is_url, is_ytdlp_target, provenance_of
from nels.errors import SourceError


# untrusted input: formats fetched over http(s) only (yt-dlp's own networking, hence the guard proxy), never
# through an external program (ffmpeg, rtmpdump) that would not go through it
GUARDED_FORMAT = ("bestaudio[protocol^=http]/bestaudio[protocol^=m3u8]/best[protocol^=http]/best[protocol^=m3u8]")


def search_target(query: str, n: int) -> str:
    """The yt-dlp target for a search: `ytsearchN:query`, or the NELS_YTDLP_SEARCH template."""
    query = " ".join(query.split())
    if not query:
        raise SourceError("empty crawl query")
    template = config.YTDLP_SEARCH.get()
    if template:
        return template.format(query=quote_plus(query), n=n)
    return f"ytsearch{int(n)}:{query}"


def entry_to_item(entry: dict, query: str | None) -> Item | None:
    """Turn one yt-dlp (flat) entry into an Item; None when it has no usable URL."""
    if entry.get("_type") in ("url", "url_transparent"):  # a flat search/playlist entry: its video page
        url = entry.get("url")
    elif entry.get("extractor_key") in ("Generic", "HTML5MediaEmbed"):
        # media found on a web page (<audio src=...>): the page may hold several, so the media URL is the identity
        url = entry.get("url") or (entry.get("formats") or [{}])[-1].get("url")
    else:
        url = entry.get("webpage_url") or entry.get("url")
    if not url and entry.get("formats"):
        url = entry["formats"][-1].get("url")
    if not url:
        return None
    if not is_url(url) and entry.get("ie_key") == "Youtube":
        url = f"https://www.youtube.com/watch?v={url}"
    dur = entry.get("duration")
    return Item(url, "ytdlp", query=query, title=entry.get("title"),
                uploader=entry.get("uploader") or entry.get("channel"),
                duration=float(dur) if dur else None, licence=entry.get("license"),
                webpage_url=entry.get("webpage_url") or url,
                extra={k: entry[k] for k in ("id", "extractor_key", "channel_id") if entry.get(k)})


def _entries(info: dict) -> Iterator[dict]:
    if info.get("_type") in ("playlist", "multi_video"):
        for e in info.get("entries") or []:
            if e:
                yield from _entries(e)
    else:
        yield info


class _Logger:
    def __init__(self):
        self.errors: list[str] = []

    def debug(self, msg):
        pass

    def info(self, msg):
        pass

    def warning(self, msg):
        pass

    def error(self, msg):
        self.errors.append(msg)


class YtDlpSource:
    """Targets: URLs (videos, playlists, pages) and `ytsearchN:query` strings, or queries via `searches`."""

    kind = "ytdlp"

    def __init__(self, targets: list[str] = (), searches: list[str] = (), per_query: int = 10,
                 allow_private: bool = True, query: str | None = None, max_duration: float | None = None,
                 socket_timeout: float = 30.0):
        self.targets, self.searches, self.per_query = list(targets), list(searches), per_query
        self.allow_private, self.query, self.max_duration = allow_private, query, max_duration
        self.socket_timeout = socket_timeout

    def _opts(self, **extra) -> dict:
        return {"quiet": True, "no_warnings": True, "noprogress": True, "socket_timeout": self.socket_timeout,
                "retries": 2, "logger": _Logger(), "ignoreerrors": False, "noplaylist": False, **extra}

    @contextmanager
    def _guarded(self, opts: dict) -> Iterator[GuardProxy | None]:
        """Untrusted input (allow_private=False): every request yt-dlp makes goes through the guard proxy
        (checked, pinned), and only formats fetched over http(s) (plain or HLS/DASH) are chosen."""
        if self.allow_private:
            yield None
            return
        with GuardProxy(timeout=self.socket_timeout) as proxy:
            opts["proxy"] = proxy.url
            if "format" in opts:
                opts["format"] = GUARDED_FORMAT
            yield proxy

    @staticmethod
    def _refusal(target: str, proxy: GuardProxy | None) -> SourceError | None:
        if proxy is not None and proxy.refused:
            return SourceError(f"{target}: {proxy.refused[0].split(': ', 1)[-1]} (a URL the page led to)")
        return None

    def items(self) -> Iterator[Item]:
        import yt_dlp

        jobs = [(t, self.query) for t in self.targets]
        jobs += [(search_target(q, self.per_query), q) for q in self.searches]
        for target, query in jobs:
            if not self.allow_private and is_url(target):
                check_public_url(target)
            # YouTube lists flat (metadata only, fast); other pages are resolved to find their media
            flat = "in_playlist" if target.startswith("ytsearch") or is_ytdlp_target(target) else False
            opts = self._opts(extract_flat=flat)
            with self._guarded(opts) as proxy:
                try:
                    with yt_dlp.YoutubeDL(opts) as ydl:
                        info = ydl.extract_info(target, download=False, process=True)
                except Exception as exc:
                    raise self._refusal(target, proxy) or SourceError(
                        f"{target}: yt-dlp could not list it ({_clean(exc)})") from None
            n = 0
            for e in _entries(info or {}):
                item = entry_to_item(e, query)
                if item is None:
                    continue
                yield item
                n += 1
                if query is not None and n >= self.per_query:
                    break

    def fetch(self, item: Item, workdir: Path) -> Fetched:
        import yt_dlp

        if not self.allow_private:
            check_public_url(item.uri)
        if self.max_duration and item.duration and item.duration > self.max_duration:
            raise SourceError(f"{item.uri}: {item.duration:.0f} s is longer than the {self.max_duration:.0f} s limit")
        out = Path(tempfile.mkdtemp(prefix="ytdlp-", dir=workdir))
        opts = self._opts(format="bestaudio/best", outtmpl=str(out / "%(id)s.%(ext)s"), noplaylist=True,
                          max_filesize=2 * 1024 ** 3, overwrites=True)
        if self.max_duration:
            opts["match_filter"] = yt_dlp.utils.match_filter_func(f"duration <=? {self.max_duration}")
        with self._guarded(opts) as proxy:
            try:
                with yt_dlp.YoutubeDL(opts) as ydl:
                    info = ydl.extract_info(item.uri, download=True)
            except Exception as exc:
                raise self._refusal(item.uri, proxy) or SourceError(
                    f"{item.uri}: yt-dlp failed ({_clean(exc)})") from None
        files = [f for f in out.iterdir() if f.is_file() and not f.name.endswith((".part", ".ytdl"))]
        if not files:
            if refused := self._refusal(item.uri, proxy):
                raise refused
            raise SourceError(f"{item.uri}: yt-dlp downloaded nothing (filtered out or no audio format)")
        info = info or {}
        prov = provenance_of(item)
        for key, field in (("title", "title"), ("uploader", "uploader"), ("licence", "license"),
                           ("webpage_url", "webpage_url")):
            prov[key] = prov.get(key) or info.get(field)
        return Fetched(files[0], True, prov)


def _clean(exc: Exception) -> str:
    msg = str(exc).replace("ERROR: ", "").strip()
    return msg.splitlines()[0][:300] if msg else exc.__class__.__name__
