"""Raw segment embeddings (the CNN's penultimate layer, before L2 normalisation) for the loop."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from nels import config
from nels.errors import ModelError

CACHE = config.cache_dir() / "learn"


def embed_audio(encoder, audio: np.ndarray) -> np.ndarray:
    """(n_segments, d) raw embeddings of one waveform (2 s windows, 1 s hop; one segment if shorter)."""
    out = encoder.encode(audio, encoder.sample_rate)
    if not len(out.starts):  # no sound in it
        return np.zeros((0, encoder.dim), np.float32)
    if out.raw is None:
        raise ModelError(f"{encoder.name} has no classifier layer to re-train")
    return out.raw


def embed_many(encoder, keys: Sequence[str], load: Callable[[str], np.ndarray], tag: str,
               progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of many clips, cached by (model, tag, keys). Returns (X, clip index per segment);
    a clip that cannot be loaded or holds no sound contributes no segment (reported on stderr)."""
    from tqdm import tqdm

    key = hashlib.sha256(json.dumps([encoder.name, tag, list(keys)]).encode()).hexdigest()[:24]
    f = CACHE / f"{key}.npz"
    if f.exists():
        z = np.load(f)
        return z["X"], z["clip"]
    X, clip = [], []
    for i, k in enumerate(tqdm(keys, desc=f"embed {tag}", unit="clip", disable=not progress, file=sys.stderr)):
        try:
            e = embed_audio(encoder, load(k))
        except Exception as exc:  # noqa: BLE001 - report and go on
            print(f"skipped {k}: {exc}", file=sys.stderr)
            continue
        X.append(e)
        clip += [i] * len(e)
    Xa = np.concatenate(X) if X else np.zeros((0, encoder.dim), np.float32)
    ca = np.asarray(clip, dtype=np.int64)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(f, X=Xa, clip=ca)
    return Xa, ca
