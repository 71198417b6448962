"""A toy encoder in one file: a 3-class tone classifier (low 300 Hz, middle 1 kHz, high 3 kHz), whose
front end is a magnitude spectrum (not NELS's log-mel) at 8 kHz (not NELS's 16 kHz). Registering it is
the one line at the bottom; tests/test_encoder_seam.py shows that ingest, search and tag then work
through it without touching any other module."""
from __future__ import annotations

import numpy as np

from nels.encoders.base import Encoded, encode_waveform, l2_normalize, register_encoder

CENTRES = {"low tone": 300.0, "middle tone": 1000.0, "high tone": 3000.0}


class ToneEncoder:
    name = "tones-v1"
    space = "tones"
    labels = list(CENTRES)
    sample_rate = 8000
    window, hop = 1.0, 0.5
    n_fft = 1024

    def __init__(self):
        freqs = np.fft.rfftfreq(self.n_fft, 1 / self.sample_rate)
        # 16 log-spaced bands from 100 Hz to 4 kHz: the embedding is the band energy profile
        edges = np.geomspace(100, 4000, 17)
        self.bands = [(freqs >= a) & (freqs < b) for a, b in zip(edges[:-1], edges[1:])]
        self.dim = len(self.bands)
        self.freqs = freqs

    def frontend(self):
        def spectrum(x: np.ndarray, start: int) -> np.ndarray:
            frames = np.lib.stride_tricks.sliding_window_view(np.pad(x, (0, self.n_fft)), self.n_fft)[::512]
            return np.abs(np.fft.rfft(frames * np.hanning(self.n_fft), axis=1)).mean(axis=0)
        return spectrum

    def encode_features(self, spectra) -> Encoded:
        S = np.asarray(spectra, dtype=np.float64)
        emb = np.stack([np.log1p(S[:, m].mean(axis=1)) for m in self.bands], axis=1)
        peak = self.freqs[S.argmax(axis=1)]
        # class probability: closeness of the spectral peak to each centre, in octaves
        d = np.abs(np.log2(np.maximum(peak, 1.0)[:, None] / np.array(list(CENTRES.values()))[None]))
        logits = -4.0 * d
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        return Encoded(l2_normalize(emb - emb.mean(axis=1, keepdims=True)), p.astype(np.float32), list(self.labels))

    def encode(self, waveform, sample_rate) -> Encoded:
        return encode_waveform(self, waveform, sample_rate)


register_encoder("tones", lambda arg: ToneEncoder())
