"""Helpers for the web tests, the screenshot script and the web benchmark: run `nels serve` as a
subprocess on loopback, and build a small library from synthesised sounds (no dataset needed).

A test helper, not part of the package: the tests import it as `devserver` (pytest puts tests/ on
sys.path), bench scripts put tests/ on sys.path first."""
from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
import wave
from pathlib import Path

import numpy as np

SR = 16000
ROOT = Path(__file__).resolve().parents[1]  # the repository (tests/ is one level down)
CHROMIUM = os.environ.get("NELS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--autoplay-policy=no-user-gesture-required", "--mute-audio"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m nels.cli --library DIR serve --port P` on 127.0.0.1, restartable on the same port."""

    def __init__(self, library: Path, port: int | None = None, admin_token: str | None = None,
                 workers: int | None = 1):
        self.library, self.port, self.proc = Path(library), port or free_port(), None
        self.workers = workers
        self.admin_token = admin_token
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 900.0) -> "Server":
        """Start `nels serve` and wait until it answers: on readiness (it loads its models before it listens),
        not on a clock. `timeout` only guards against a hang (a busy CI machine may take minutes)."""
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        if self.admin_token:
            env["NELS_ADMIN_TOKEN"] = self.admin_token
        else:
            env.pop("NELS_ADMIN_TOKEN", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "nels.cli", "--library", str(self.library), "serve",
                                      "--host", "127.0.0.1", "--port", str(self.port)]
                                     + (["--workers", str(self.workers)] if self.workers else []), cwd=ROOT, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nels serve exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/stats", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)  # not listening yet: the models are loading
        self.stop()
        raise RuntimeError(f"nels serve did not answer within {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def __enter__(self):
        # `with Server(...).start(timeout=...)`: already running; starting again would orphan the first process
        return self if self.proc is not None and self.proc.poll() is None else self.start()

    def __exit__(self, *exc):
        self.stop()


# -- synthesised sounds ------------------------------------------------------------------------------------
def tone(f: float, sec: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(sec * SR)) / SR
    return amp * np.sin(2 * np.pi * f * t)


def synth_sounds() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    quiet = 0.02 * rng.standard_normal(3 * SR)
    clicks = np.zeros(6 * SR)
    clicks[:: SR // 8] = 0.9
    bursts = np.concatenate([0.6 * rng.standard_normal(SR // 2) if i % 2 == 0 else np.zeros(SR // 2)
                             for i in range(12)])
    t = np.arange(6 * SR) / SR
    chirp = 0.5 * np.sin(2 * np.pi * (200 * t + 300 * t ** 2))
    hum = sum(0.3 / k * np.sin(2 * np.pi * 100 * k * t) for k in range(1, 6))
    return {
        "tone_late": np.concatenate([quiet, tone(1000, 3)]),  # the tone starts at 3 s
        "clicks": clicks,
        "bursts": bursts,
        "chirp": chirp,
        "hum": hum,
    }


def wav_bytes(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2")
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def write_wav(path: Path, x: np.ndarray) -> Path:
    Path(path).write_bytes(wav_bytes(x))
    return Path(path)


def build_library(root: Path, model: str = "baseline") -> Path:
    """root/sounds/*.wav (5 synthesised sounds) ingested into root/library; returns the library folder."""
    from nels.library import Library
    from nels.ingest.runner import IngestOptions, ingest

    src = Path(root) / "sounds"
    src.mkdir(parents=True, exist_ok=True)
    for name, x in synth_sounds().items():
        write_wav(src / f"{name}.wav", x)
    lib_dir = Path(root) / "library"
    lib = Library(lib_dir, create=True)
    try:
        rep = ingest(lib, [str(src)], model=model, options=IngestOptions(progress=False))
        if len(rep.added) + rep.duplicates != 5:
            raise RuntimeError(f"synthetic ingest failed: {rep.to_dict()}")
        lib.save_indexes()
    finally:
        lib.close()
    return lib_dir
