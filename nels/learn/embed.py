"""Raw segment embeddings (the CNN's penultimate layer, before L2 normalisation) for the loop."""
from __future__ import annotations

import hashlib
import json
import os
import sys
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


def encoder_key(encoder) -> str:
    """What a raw embedding depends on: the exact weights of the layers below the output layer. A head-only
    version (`heads.save_with_head`) records its parent's as `backbone_sha256`, so every version of one CNN
    shares the cached embeddings; a model without a recorded hash is keyed by its name."""
    meta = getattr(encoder, "meta", {}) or {}
    sha = meta.get("backbone_sha256") or meta.get("weights_sha256") or ""
    return f"w-{sha[:24]}" if sha else encoder.name


def embed_cached(encoder, content_hash: str, load: Callable[[], np.ndarray]) -> np.ndarray:
    """Raw embeddings of one clip, cached on disk by (backbone, the clip's content hash): the same audio in
    another library (another run of an experiment, another seed) is not decoded and encoded again."""
    f = CACHE / "clips" / encoder_key(encoder) / f"{content_hash}.npy"
    if f.exists():
        try:
            return np.load(f)
        except (OSError, ValueError):  # a torn write by a killed process: encode again
            pass
    e = np.asarray(embed_audio(encoder, load()), np.float32)
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(f".{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, e)
    os.replace(tmp, f)
    return e


def embed_files(encoder, paths: Sequence[str], load: Callable[[str], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of many files, each cached on disk by (backbone, real path, size, modification time): any
    subset of a dataset embedded once (another seed set, another run) costs no decoding or encoding again.
    Returns (X, clip index per segment) like `embed_many`; a file that cannot be loaded contributes no segment."""
    X, clip = [], []
    for i, p in enumerate(paths):
        try:
            st = os.stat(p)
            key = hashlib.sha256(f"{os.path.realpath(p)}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:32]
            e = embed_cached(encoder, "file-" + key, lambda: load(p))
        except Exception as exc:  # noqa: BLE001 - report and go on
            print(f"skipped {p}: {exc}", file=sys.stderr)
            continue
        X.append(e)
        clip += [i] * len(e)
    Xa = np.concatenate(X) if X else np.zeros((0, encoder.dim), np.float32)
    return Xa, np.asarray(clip, dtype=np.int64)


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
