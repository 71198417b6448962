"""The Encoder seam: audio segments in, embeddings (and class probabilities where there are classes) out.

Implementations: `baseline` (training-free log-mel statistics, `nels.encoders.baseline`) and `cnn`
(trained, `nels.encoders.cnn`); a pretrained model loaded from a user's file plugs in the same way.
Encoders consume log-mels (`nels.audio.features.logmel`), so the front end is computed once per
clip and shared, and a model is refused if its FeatureConfig differs from the library's.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from nels.audio.features import FeatureConfig, logmel
from nels.errors import ModelError


@dataclass
class Encoded:
    """embeddings: (n, dim) float32, L2-normalised (inner product = cosine).
    probs: (n, n_classes) float32 class probabilities, or None for encoders without classes."""

    embeddings: np.ndarray
    probs: np.ndarray | None = None


@runtime_checkable
class Encoder(Protocol):
    name: str  # identifies the model version; stored with every vector it made
    space: str  # the vector index this encoder writes ("baseline", "cnn", ...)
    dim: int
    labels: list[str] | None  # class names, index-aligned with Encoded.probs
    feature_config: FeatureConfig

    def encode_mels(self, mels: Sequence[np.ndarray]) -> Encoded:
        """Encode loudness-normalised log-mels, each (frames, n_mels); lengths may differ."""
        ...


def encode_audio(encoder: Encoder, audios: Sequence[np.ndarray]) -> Encoded:
    """Convenience: log-mel each waveform with the encoder's own config, then encode."""
    return encoder.encode_mels([logmel(a, encoder.feature_config) for a in audios])


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "data" / "models" / "esc50-cnn"


def load_encoder(spec: str | os.PathLike | None = None) -> Encoder:
    """Resolve an encoder.

    spec : "baseline"; a path to a trained model folder (model.json + weights); "default" or None,
        the shipped CNN when present, else the baseline.
    """
    from nels.encoders.baseline import BaselineEncoder

    if spec in (None, "default"):
        if (DEFAULT_MODEL_DIR / "model.json").exists():
            spec = DEFAULT_MODEL_DIR
        else:
            return BaselineEncoder()
    if spec == "baseline":
        return BaselineEncoder()
    path = Path(spec)
    if not (path / "model.json").exists():
        raise ModelError(f"{path}: not a NELS model folder (no model.json); use 'baseline' or a folder made by 'nels train'")
    from nels.encoders.cnn import CNNEncoder

    enc = CNNEncoder.load(path)
    enc.path = path.resolve()  # where its companions (the joint model) live
    return enc
