"""A training-free acoustic encoder: statistics of the log-mel spectrogram.

Why: query-by-example must work before any model is trained, and on classes no model knows.
The embedding is the per-band mean (spectral envelope, with the overall level removed) and the
per-band standard deviation (how much each band fluctuates), plus the mean absolute frame-to-frame
change (onsets, texture), each block standardised so none dominates. 192 dimensions, L2-normalised.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from nels.audio.features import FeatureConfig
from nels.encoders.base import Encoded, LogMelEncoder, l2_normalize


class BaselineEncoder(LogMelEncoder):
    name = "baseline-v1"
    space = "baseline"
    labels = None

    def __init__(self, feature_config: FeatureConfig = FeatureConfig()):
        self.feature_config = feature_config
        self.dim = 3 * feature_config.n_mels

    def encode_mels(self, mels: Sequence[np.ndarray]) -> Encoded:
        out = np.empty((len(mels), self.dim), dtype=np.float32)
        for i, m in enumerate(mels):
            mean = m.mean(axis=0)
            mean = mean - mean.mean()
            std = m.std(axis=0)
            flux = np.abs(np.diff(m, axis=0)).mean(axis=0) if m.shape[0] > 1 else np.zeros_like(mean)
            blocks = [mean / 10.0, (std - std.mean()) / 5.0, (flux - flux.mean()) / 3.0]
            out[i] = np.concatenate(blocks)
        return Encoded(l2_normalize(out), None)


def create(arg: str | None = None) -> BaselineEncoder:
    """The registry's factory (`create_encoder("baseline")`)."""
    return BaselineEncoder()
