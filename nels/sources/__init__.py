"""Where audio comes from: local files and folders, HTTP(S) URLs, and yt-dlp (YouTube search, videos,
playlists, and any page its extractors understand). Every Source yields `Item`s with provenance;
`nels.sources.state` keeps the resumable crawl table."""
from nels.sources.route import expand_inputs
from nels.sources.source import Item, Source

__all__ = ["Item", "Source", "expand_inputs"]
