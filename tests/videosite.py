"""A loopback "video site" for the never-ending loop (`nels run`): search results and watch pages that yt-dlp's
generic extractor reads, serving audio whose titles are right about 70 % of the time, plus distractors.

    /search?q=QUERY&n=N   an RSS feed (yt-dlp's generic extractor reads RSS as a playlist): the N best
                          matching videos, each <item> with its title and its watch page
    /watch/ID             a watch page: <title> and an <audio> element (the generic extractor's media)
    /media/ID.wav         the audio

The catalogue of videos is built by `synthetic_videos` (synthesised sounds, for tests: no dataset needed)
or `esc50_videos` (ESC-50 clips of the folds the seed model never trained on, when ESC-50 is present).
A video's title names its true class with probability `title_accuracy` (else another class: a wrong
title, as on the real web); distractors (sounds of no class the site is asked about) carry class titles
too. A search matches titles by word overlap, so a query finds correctly titled clips, mistitled clips
of other classes and distractors, the mixture the loop has to clean up.

Importable by tests and bench: `VideoSite(videos).start()` -> base URL; `search_template` is the value
for NELS_YTDLP_SEARCH.
"""
from __future__ import annotations

import html
import http.server
import io
import re
import socketserver
import threading
import wave
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np

SR = 16000


@dataclass
class Video:
    id: str
    title: str
    truth: str | None  # the class actually heard (None: a distractor)
    audio: np.ndarray | None = None  # float32 mono at SR (synthetic), or
    path: Path | None = None  # an audio file served as is


def wav_bytes(x: np.ndarray, sr: int = SR) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


# -- synthesised classes (tests) ------------------------------------------------------------------------
def tone_sound(freq: float, seconds: float, rng: np.random.Generator, sr: int = SR, noise: float = 0.05) -> np.ndarray:
    """A tone at `freq` (detuned by ~3 % per clip) with a harmonic and white noise of amplitude `noise`
    (relative to the tone's 1): classes 5-6 % apart overlap, so a model confuses some of their clips."""
    t = np.arange(int(seconds * sr)) / sr
    f = freq * (1 + 0.03 * rng.standard_normal())
    x = np.sin(2 * np.pi * f * t) + 0.3 * np.sin(4 * np.pi * f * t) + noise * rng.standard_normal(t.size)
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def noise_sound(seconds: float, rng: np.random.Generator, sr: int = SR) -> np.ndarray:
    x = rng.standard_normal(int(seconds * sr))
    return (0.2 * x / np.abs(x).max()).astype(np.float32)


def synthetic_videos(classes: dict[str, float], per_class: int = 6, distractors: int = 3,
                     title_accuracy: float = 0.7, seconds: float = 2.0, seed: int = 0,
                     noise: float = 0.05) -> list[Video]:
    """Videos of tone classes {name: frequency}: `per_class` each, titled right with probability
    `title_accuracy`, plus `distractors` noise clips titled as some class (`noise`: see tone_sound)."""
    rng = np.random.default_rng(seed)
    names = list(classes)
    out = []
    for name, freq in classes.items():
        for i in range(per_class):
            shown = name if rng.random() < title_accuracy else rng.choice([n for n in names if n != name] or [name])
            out.append(Video(f"{_slug(name)}-{i}", f"{shown} sound {i}", name, tone_sound(freq, seconds, rng, noise=noise)))
    for i in range(distractors):
        out.append(Video(f"noise-{i}", f"{rng.choice(names)} recording {i}", None, noise_sound(seconds, rng)))
    return out


def tone_folders(root: Path, classes: dict[str, float], splits: dict[str, int], seconds: float = 2.0,
                 seed: int = 1, noise: float = 0.05) -> dict[str, Path]:
    """Labelled sets of tone classes as folders per class: {split name: clips per class} -> {split: folder}
    (e.g. a seed and a held-out set for `nels run --format folders --heldout DIR`)."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in splits.items():
        for c, f in classes.items():
            (Path(root) / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                (Path(root) / split / c / f"{i}.wav").write_bytes(wav_bytes(tone_sound(f, seconds, rng, noise=noise)))
        out[split] = Path(root) / split
    return out


def esc50_videos(root: Path, classes: list[str] | None = None, folds: tuple[int, ...] = (1,),
                 title_accuracy: float = 0.7, distractor_classes: list[str] = (), keep=None,
                 seed: int = 0) -> list[Video]:
    """ESC-50 clips of `folds` (those the seed model did not train on) as videos: classes (all when None)
    titled right with probability `title_accuracy`; clips of `distractor_classes` carry a wrong class title.
    `keep(filename) -> bool` chooses which clips the site serves (the rest can be a held-out set)."""
    import csv

    rng = np.random.default_rng(seed)
    rows = list(csv.DictReader(open(Path(root) / "meta" / "esc50.csv")))
    names = sorted({r["category"].replace("_", " ") for r in rows})
    wanted = set(classes) if classes else set(names)
    out = []
    for r in rows:
        name = r["category"].replace("_", " ")
        if int(r["fold"]) not in folds or (keep is not None and not keep(r["filename"])):
            continue
        audio = next((p for p in (Path(root) / "audio").glob(Path(r["filename"]).stem + ".*")), None)
        if audio is None:
            continue
        vid = Path(r["filename"]).stem
        if name in wanted:
            shown = name if rng.random() < title_accuracy else rng.choice(sorted(wanted - {name}) or [name])
            out.append(Video(vid, f"{shown} ({vid})", name, path=audio))
        elif name in distractor_classes:
            out.append(Video(vid, f"{rng.choice(sorted(wanted))} ({vid})", None, path=audio))
    return out


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")


def _words(s: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", s.lower()) if len(w) > 2}


class VideoSite:
    """The site over `videos`, served on 127.0.0.1 (a random port) by `start()`; `hits` counts requests by
    path kind ('search', 'watch', 'media'); `fail_every` > 0 answers every n-th media request with a 503
    (to exercise retries)."""

    def __init__(self, videos: list[Video], fail_every: int = 0):
        self.videos = {v.id: v for v in videos}
        self.fail_every = fail_every
        self.hits = {"search": 0, "watch": 0, "media": 0, "other": 0}
        self.lock = threading.Lock()
        self.server = None
        self.thread = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def search_template(self) -> str:
        """The NELS_YTDLP_SEARCH value that sends crawl queries here."""
        return self.base + "/search?q={query}&n={n}"

    def search(self, query: str, n: int) -> list[Video]:
        """The videos whose title shares most words with the query (ties: by id), at most n."""
        q = _words(query)
        scored = [(len(q & _words(v.title)), v.id) for v in self.videos.values()]
        return [self.videos[i] for s, i in sorted(scored, key=lambda t: (-t[0], t[1])) if s > 0][:n]

    def _handler(self):
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_HEAD(self):
                self.do_GET()

            def do_GET(self):
                url = urlparse(self.path)
                kind = url.path.split("/")[1] if url.path.count("/") >= 1 else ""
                with site.lock:
                    site.hits[kind if kind in site.hits else "other"] += 1
                    n_media = site.hits["media"]
                if url.path == "/search":
                    qs = parse_qs(url.query)
                    found = site.search(qs.get("q", [""])[0], int(qs.get("n", ["10"])[0]))
                    items = "".join(
                        f"<item><title>{html.escape(v.title)}</title><link>{site.base}/watch/{v.id}</link>"
                        f"<guid>{site.base}/watch/{v.id}</guid></item>" for v in found)
                    body = (f'<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel>'
                            f"<title>results</title><link>{site.base}/</link>{items}</channel></rss>").encode()
                    return self._send(200, body, "application/rss+xml")
                m = re.fullmatch(r"/watch/([\w-]+)", url.path)
                if m and m.group(1) in site.videos:
                    v = site.videos[m.group(1)]
                    body = (f"<!DOCTYPE html><html><head><title>{html.escape(v.title)}</title>"
                            f'<meta property="og:title" content="{html.escape(v.title)}"></head><body>'
                            f'<h1>{html.escape(v.title)}</h1><audio controls src="/media/{v.id}{_ext(v)}"></audio>'
                            f"</body></html>").encode()
                    return self._send(200, body, "text/html; charset=utf-8")
                m = re.fullmatch(r"/media/([\w-]+)\.\w+", url.path)
                if m and m.group(1) in site.videos:
                    if site.fail_every and n_media % site.fail_every == 0:
                        return self._send(503, b"busy", "text/plain")
                    v = site.videos[m.group(1)]
                    if v.path is not None:
                        return self._send(200, v.path.read_bytes(), "audio/flac" if v.path.suffix == ".flac"
                                          else "audio/wav")
                    return self._send(200, wav_bytes(v.audio), "audio/wav")
                return self._send(404, b"not found", "text/plain")

        return Handler

    def start(self) -> str:
        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self.base

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


def _ext(v: Video) -> str:
    return v.path.suffix if v.path is not None else ".wav"


if __name__ == "__main__":  # serve a synthetic site until interrupted (for trying `nels run` by hand)
    import time

    site = VideoSite(synthetic_videos({"low hum": 200.0, "whistle": 2500.0}))
    print("NELS_YTDLP_SEARCH=" + site.start().rstrip("/") + "/search?q={query}&n={n}", flush=True)
    while True:
        time.sleep(3600)
