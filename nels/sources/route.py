"""Routing what a user typed (paths, folders, URL-list files, URLs, yt-dlp targets) to the right Sources."""
from __future__ import annotations

from pathlib import Path

from nels.sources.http import HttpSource
from nels.sources.source import (AUDIO_EXTENSIONS, LocalSource, Source, is_url, is_ytdlp_target,
                                 looks_like_url_list, read_url_list)
from nels.sources.ytdlp import YtDlpSource


def is_url_list(p: Path, max_lines: int = 200) -> bool:
    """Whether a text file is a list of inputs: every line (blank lines and # comments aside; the first
    `max_lines` looked at) is a URL, a yt-dlp target or an existing path, and there is at least one. Any
    other file (notes, a transcript, an audio file with an odd name) is handed to the decoder, which says
    whether it is audio."""
    if not looks_like_url_list(p):
        return False
    try:
        with p.open("rb") as f:
            head = f.read(64 * 1024)
        text = head.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    lines = [ln.strip() for ln in text.splitlines()[:max_lines]]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    return bool(lines) and all(is_url(ln) or ln.startswith(("ytsearch", "ytdl:")) or Path(ln).expanduser().exists()
                               for ln in lines)


def expand_inputs(inputs: list[str], allow_private: bool = True, query: str | None = None) -> list["Source"]:
    """Route command-line inputs to sources: folders/files, URL-list files, URLs, yt-dlp targets."""
    local, urls, ytdl = [], [], []
    for s in inputs:
        if is_url(s) or s.startswith(("ytsearch", "ytdl:")):
            (ytdl if is_ytdlp_target(s) else urls).append(s)
            continue
        p = Path(s).expanduser()
        if p.is_file() and p.suffix.lower() not in AUDIO_EXTENSIONS and is_url_list(p):
            for u in read_url_list(p):
                if is_url(u) or u.startswith("ytsearch"):
                    (ytdl if is_ytdlp_target(u) else urls).append(u)
                else:
                    local.append(u)
        else:
            local.append(s)
    sources: list[Source] = []
    if local:
        sources.append(LocalSource(local))
    if urls:
        sources.append(HttpSource(urls, allow_private=allow_private, query=query))
    if ytdl:
        sources.append(YtDlpSource(ytdl, allow_private=allow_private, query=query))
    return sources
