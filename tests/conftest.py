"""Shared fixtures: synthesised sounds (no dataset needed) and a local HTTP server on 127.0.0.1."""
from __future__ import annotations

import functools
import http.server
import os
import socketserver
import threading
import wave
from pathlib import Path

import numpy as np
import pytest

SR = 16000
# New libraries in tests use the ESC-50 CNN unless a test asks for another model (the user default adds YAMNet
# where its weights are found: tests/test_default_model.py covers that choice itself).
os.environ.setdefault("NELS_MODEL", "default")
ESC50 = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "esc50"


def synth(kind: str, seconds: float = 3.0, sr: int = SR, seed: int = 0) -> np.ndarray:
    """Distinct, recognisable test sounds: 'tone' (440 Hz + harmonics), 'high' (3 kHz tone),
    'noise' (white), 'clicks' (impulse train), 'chirp' (rising sweep), 'hum' (100 Hz buzz)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    if kind == "tone":
        x = np.sin(2 * np.pi * 440 * t) + 0.5 * np.sin(2 * np.pi * 880 * t)
    elif kind == "high":
        x = np.sin(2 * np.pi * 3000 * t)
    elif kind == "noise":
        x = rng.standard_normal(t.size)
    elif kind == "clicks":
        x = np.zeros(t.size)
        x[:: sr // 8] = 1.0
        x = np.convolve(x, np.exp(-np.arange(200) / 20.0), mode="same")
    elif kind == "chirp":
        x = np.sin(2 * np.pi * (200 * t + 1500 * t ** 2 / seconds))
    elif kind == "hum":
        x = np.sign(np.sin(2 * np.pi * 100 * t)) * 0.5
    else:
        raise ValueError(kind)
    x = x + 0.01 * rng.standard_normal(t.size)
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def write_wav(path: Path, x: np.ndarray, sr: int = SR) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def write_encoded(path: Path, x: np.ndarray, fmt: str, codec: str, sr: int = SR) -> Path:
    """Encode with PyAV (mp3, opus, m4a...) to test real decoding of compressed formats."""
    import av

    rate = 48000 if codec == "libopus" else sr
    if rate != sr:
        x = np.interp(np.arange(int(x.size * rate / sr)) * sr / rate, np.arange(x.size), x).astype(np.float32)
    with av.open(str(path), "w", format=fmt) as out:
        st = out.add_stream(codec, rate=rate)
        st.layout = "mono"
        fr = av.AudioFrame.from_ndarray(x[None].astype(np.float32), format="flt", layout="mono")
        fr.sample_rate = rate
        for p in st.encode(fr):
            out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    return path


@pytest.fixture
def sounds(tmp_path) -> Path:
    """A folder of six different synthesised sounds (3 s each), one per kind."""
    d = tmp_path / "sounds"
    for i, kind in enumerate(["tone", "high", "noise", "clicks", "chirp", "hum"]):
        write_wav(d / f"{kind}.wav", synth(kind, seed=i))
    return d


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):
        if self.path.startswith("/slow"):
            import time

            time.sleep(5)
        if self.path.startswith("/search"):
            # a search results page: yt-dlp's generic extractor finds the <audio> elements
            body = b"<html><head><title>results</title></head><body>" + b"".join(
                f'<audio src="/{n}" controls></audio>'.encode() for n in sorted(self.server.files)) + b"</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.server.hits.append(self.path)
            return
        self.server.hits.append(self.path)
        return super().do_GET()


@pytest.fixture
def http_server(tmp_path):
    """Serve tmp_path/www on 127.0.0.1 (random port). Yields (base_url, www_dir, server)."""
    www = tmp_path / "www"
    www.mkdir()

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True

    srv = Server(("127.0.0.1", 0), functools.partial(_Handler, directory=str(www)))
    srv.hits = []
    srv.files = set()
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", www, srv
    srv.shutdown()
    srv.server_close()
