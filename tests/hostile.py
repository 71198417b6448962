"""Hostile input for the security tests and bench/bench_hostile.py: poison audio files, malformed containers,
polyglots, and `Site`, a loopback HTTP server with scripted answers (redirects, pages, files) that records
what it was asked.

A test helper, not part of the package: tests import it as `hostile` (pytest puts tests/ on sys.path)."""
from __future__ import annotations

import http.server
import io
import socketserver
import sqlite3
import struct
import threading
import wave
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

SR = 16000


# -- audio builders -------------------------------------------------------------------------------------------
def _riff(chunks: list[tuple[bytes, bytes]], riff_size: int | None = None) -> bytes:
    body = b"WAVE" + b"".join(cid + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b"")
                              for cid, data in chunks)
    return b"RIFF" + struct.pack("<I", len(body) if riff_size is None else riff_size) + body


def float_wav(x: np.ndarray, sr: int = SR, channels: int = 1) -> bytes:
    """32-bit IEEE float WAV (format 3): the format that can carry NaN, infinity and any amplitude."""
    data = np.asarray(x, dtype="<f4").tobytes()
    fmt = struct.pack("<HHIIHHH", 3, channels, sr, sr * 4 * channels, 4 * channels, 32, 0)
    return _riff([(b"fmt ", fmt), (b"fact", struct.pack("<I", len(x) // channels)), (b"data", data)])


def pcm16_wav(x: np.ndarray, sr: int = SR, channels: int = 1, extra: list[tuple[bytes, bytes]] = ()) -> bytes:
    """16-bit PCM WAV, with optional extra chunks (placed before the data)."""
    data = (np.clip(np.asarray(x), -1, 1) * 32767).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, channels, sr, sr * 2 * channels, 2 * channels, 16)
    return _riff([(b"fmt ", fmt), *extra, (b"data", data)])


def noise(seconds: float, seed: int = 0, amp: float = 0.3) -> np.ndarray:
    return (amp * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


HTML = b"<html><body><script>document.title='pwned:'+sessionStorage.getItem('nels-admin-token')</script></body></html>"


def html_wav(seconds: float = 2.0, seed: int = 3) -> bytes:
    """A valid WAV that also holds an HTML page (in a LIST chunk): rendered as text/html, it runs its script."""
    return pcm16_wav(noise(seconds, seed), extra=[(b"LIST", b"INFO" + b"ICMT" + struct.pack("<I", len(HTML)) + HTML)])


def flac_bytes(x: np.ndarray, sr: int = SR) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="flac") as out:
        st = out.add_stream("flac", rate=sr)
        st.layout = "mono"
        fr = av.AudioFrame.from_ndarray((np.clip(x, -1, 1) * 32767).astype(np.int16)[None], format="s16",
                                        layout="mono")
        fr.sample_rate = sr
        for p in st.encode(fr):
            out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    return buf.getvalue()


def poison_files() -> dict[str, tuple[bytes, str]]:
    """name -> (content, what the failure must say): audio that decodes to numbers no recording holds."""
    x = noise(3.0, 1)
    nan_tail = x.copy()
    nan_tail[int(0.85 * x.size):] = np.nan  # 85 % valid noise, 15 % NaN
    inf = x.copy()
    inf[SR] = np.inf
    return {
        "huge.wav": (float_wav(np.where(np.arange(x.size) % 2, 1e30, -1e30).astype(np.float32)), "absurd amplitude"),
        "nan.wav": (float_wav(np.full(x.size, np.nan, np.float32)), "non-finite samples"),
        "inf.wav": (float_wav(inf), "non-finite samples"),
        "nan_tail.wav": (float_wav(nan_tail), "non-finite samples"),
    }


def hostile_corpus(folder: Path) -> dict[str, str | None]:
    """Write the hostile corpus into `folder`. Returns name -> the failure reason it must be recorded with, or
    None for a file that is valid enough to be added (the name says what is odd about it)."""
    folder.mkdir(parents=True, exist_ok=True)
    expect: dict[str, str | None] = {}
    for name, (data, reason) in poison_files().items():
        (folder / name).write_bytes(data)
        expect[name] = reason
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        z.writestr("readme.txt", "not audio " * 200)
    (folder / "zip_renamed.wav").write_bytes(zbuf.getvalue())
    expect["zip_renamed.wav"] = "not a readable audio file"
    (folder / "zero_bytes.wav").write_bytes(b"")
    expect["zero_bytes.wav"] = "empty file"
    # a header that claims 4 GB of data over 2 s of real audio: what is there decodes, the claim is not believed
    claim = bytearray(pcm16_wav(noise(2.0, 4)))
    claim[4:8] = struct.pack("<I", 0xFFFFFFF0)
    claim[40:44] = struct.pack("<I", 0xFFFFFFF0 - 36)
    (folder / "claims_4gb.wav").write_bytes(bytes(claim))
    expect["claims_4gb.wav"] = None
    (folder / "hires_96k_8ch.wav").write_bytes(
        pcm16_wav(np.repeat(noise(2.0, 5), 8 * 6)[: 96000 * 2 * 8], sr=96000, channels=8))
    expect["hires_96k_8ch.wav"] = None
    (folder / "one_sample.wav").write_bytes(pcm16_wav(np.array([0.5], np.float32)))
    expect["one_sample.wav"] = "no sound"
    flac = flac_bytes(noise(4.0, 6))
    (folder / "truncated.flac").write_bytes(flac[: len(flac) // 2])  # a partial download: what decodes is kept
    expect["truncated.flac"] = None
    (folder / "polyglot.wav").write_bytes(html_wav())
    expect["polyglot.wav"] = None
    (folder / "header_only.wav").write_bytes(pcm16_wav(np.zeros(0, np.float32)))
    expect["header_only.wav"] = ""  # fails; FFmpeg's reason varies by version
    return expect


def garbage_payloads(seed: int = 0) -> list[tuple[str, bytes]]:
    """Uploads a hostile client sends: random bytes, poison WAVs, a zip, HTML, a truncated header."""
    rng = np.random.default_rng(seed)
    out = [(n, d) for n, (d, _) in poison_files().items()]
    out += [("random.wav", rng.bytes(5000)), ("page.wav", HTML * 20), ("header.wav", pcm16_wav(noise(1.0))[:44]),
            ("empty.wav", b""), ("riff.wav", b"RIFF\xff\xff\xff\xffWAVEfmt " + rng.bytes(200))]
    return out


def library_is_consistent(lib_dir: Path) -> dict:
    """SQLite's integrity check, and every count that must agree: clips with segments, segments with vectors,
    the FAISS index with the catalogue, media files with clips. Returns the counts."""
    with sqlite3.connect(lib_dir / "nels.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        q = lambda sql: conn.execute(sql).fetchone()[0]  # noqa: E731
        counts = {"clips": q("SELECT COUNT(*) FROM clips"), "segments": q("SELECT COUNT(*) FROM segments"),
                  "vectors": q("SELECT COUNT(*) FROM vectors"), "hashes": q("SELECT COUNT(DISTINCT content_hash) FROM clips")}
        assert q("SELECT COUNT(*) FROM clips c WHERE NOT EXISTS (SELECT 1 FROM segments s WHERE s.clip_id=c.id)") == 0
        assert q("SELECT COUNT(*) FROM segments s WHERE NOT EXISTS (SELECT 1 FROM vectors v WHERE v.segment_id=s.id)") == 0
        assert counts["hashes"] == counts["clips"]
        for (blob,) in conn.execute("SELECT vec FROM vectors"):
            assert np.isfinite(np.frombuffer(blob, np.float32)).all()
        media = {r[0] for r in conn.execute("SELECT media_path FROM clips")}
    on_disk = {str(p.relative_to(lib_dir)) for p in (lib_dir / "media").rglob("*") if p.is_file()}
    assert on_disk == media, on_disk ^ media  # no orphan, no missing media, no .part left
    from nels.library import Library

    lib = Library(lib_dir, create=False)
    try:
        for space in lib.spaces():
            assert len(lib.store(space)) == counts["vectors"] // max(1, len(lib.spaces()))
    finally:
        lib.close()
    return counts


# -- a scripted loopback site ------------------------------------------------------------------------------------
Route = tuple[int, dict, bytes] | Callable[[str], tuple[int, dict, bytes]]


class Site:
    """An HTTP server on `host` (127.0.0.1, 127.0.0.2...: all loopback on Linux) answering `routes` (path ->
    (status, headers, body), or a function of the path); everything else is 404. `hits` lists the paths asked.
    Serves until `close()`; `port=0` picks a free port."""

    def __init__(self, host: str = "127.0.0.1", routes: dict[str, Route] | None = None, port: int = 0):
        self.routes: dict[str, Route] = dict(routes or {})
        self.hits: list[str] = []
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                site.hits.append(self.path)
                route = site.routes.get(self.path.split("?")[0])
                status, headers, body = (404, {}, b"not here") if route is None else (
                    route(self.path) if callable(route) else route)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.server = Server((host, port), Handler)
        self.host, self.port = host, self.server.server_address[1]
        self.url = f"http://{host}:{self.port}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def audio(body: bytes, ctype: str = "audio/wav") -> tuple[int, dict, bytes]:
    return 200, {"Content-Type": ctype}, body


def redirect(to: str, status: int = 302) -> tuple[int, dict, bytes]:
    return status, {"Location": to}, b""


def page(html: str) -> tuple[int, dict, bytes]:
    return 200, {"Content-Type": "text/html; charset=utf-8"}, html.encode()


def wave_info(data: bytes) -> tuple[int, int, int]:
    """(channels, rate, frames) of a PCM WAV, for sanity checks."""
    with wave.open(io.BytesIO(data)) as w:
        return w.getnchannels(), w.getframerate(), w.getnframes()
