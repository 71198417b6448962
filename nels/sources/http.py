"""Direct HTTP(S) downloads of audio files, streamed to disk with a size cap and a timeout.

A URL that turns out to be a web page (text/html) is handed to yt-dlp's generic extractor, which
finds <audio>/<video> elements and embedded players.
"""
from __future__ import annotations

import http.client
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse, unquote

from nels import config
from nels.sources.guard import guarded_opener, plain_opener, split_url
from nels.sources.source import AUDIO_EXTENSIONS, Fetched, Item, provenance_of
from nels.errors import SourceError

USER_AGENT = "nels/0.1 (+https://github.com/nels-audio/nels)"
MAX_BYTES = config.MAX_DOWNLOAD_BYTES


class HttpSource:
    kind = "url"

    def __init__(self, urls: list[str], allow_private: bool = True, query: str | None = None,
                 timeout: float = 30.0, max_bytes: int = MAX_BYTES):
        self.urls, self.allow_private, self.query = urls, allow_private, query
        self.timeout, self.max_bytes = timeout, max_bytes

    def items(self) -> Iterator[Item]:
        for u in self.urls:
            try:
                name = unquote(Path(urlparse(u).path).name) or urlparse(u).hostname
            except ValueError:  # "http://[::1": fetching it says why
                name = u[:200]
            yield Item(u, "url", query=self.query, title=name, webpage_url=u)

    def fetch(self, item: Item, workdir: Path) -> Fetched:
        split_url(item.uri)  # a malformed URL ("http://[::1", port 99999, ftp:) is a SourceError, not a crash
        # untrusted input: every connection (redirect hops too) resolves once, is checked, and goes to the
        # address checked (so a DNS answer that changes after the check cannot move it)
        opener = plain_opener() if self.allow_private else guarded_opener()
        req = urllib.request.Request(item.uri, headers={"User-Agent": USER_AGENT})
        try:
            resp = opener.open(req, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            raise SourceError(f"{item.uri}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, TimeoutError, OSError, http.client.HTTPException, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SourceError(f"{item.uri}: unreachable ({reason})") from None
        with resp:
            ctype = (resp.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if ctype in ("text/html", "application/xhtml+xml"):
                from nels.sources.ytdlp import YtDlpSource

                return YtDlpSource([item.uri], allow_private=self.allow_private).fetch(item, workdir)
            # a hint for the demuxer only: the stored name takes the extension of the format decoded
            suffix = Path(urlparse(resp.geturl()).path).suffix.lower()
            suffix = suffix if suffix in AUDIO_EXTENSIONS else ".bin"
            fd, tmp = tempfile.mkstemp(suffix=suffix, dir=workdir)
            n = 0
            try:
                with open(fd, "wb") as f:
                    while block := resp.read(1 << 16):
                        n += len(block)
                        if n > self.max_bytes:
                            raise SourceError(f"{item.uri}: larger than {self.max_bytes // 1024 ** 2} MB, skipped")
                        f.write(block)
            except (TimeoutError, OSError, http.client.HTTPException) as exc:
                Path(tmp).unlink(missing_ok=True)
                raise SourceError(f"{item.uri}: download interrupted ({exc})") from None
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        if n == 0:
            Path(tmp).unlink(missing_ok=True)
            raise SourceError(f"{item.uri}: empty response")
        prov = provenance_of(item)
        prov["content_type"] = ctype
        return Fetched(Path(tmp), True, prov)
