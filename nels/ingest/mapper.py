"""Mapper: one local file -> a ClipRecord (hash, segments, embeddings, class probabilities).

Decoding streams (30 s chunks), so memory is flat in the file's length: only the per-segment
embeddings (a few hundred floats per second of audio) accumulate.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np

from nels import config
from nels.audio.decode import probe_duration, stream
from nels.audio.features import SlidingLogMel
from nels.audio.segment import SegmentConfig, segments
from nels.errors import DecodeError
from nels.store.library import ClipRecord
from nels.encoders.base import Encoder

BATCH = config.ENCODE_BATCH


def content_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


class TooLong(Exception):
    """The item exceeds the max duration: skipped, not failed."""


def encode_file(path: Path, encoders: Sequence[Encoder], seg_config: SegmentConfig = SegmentConfig(),
                max_duration: float | None = None) -> tuple[float, np.ndarray, np.ndarray, dict, tuple | None]:
    """Decode, segment and encode `path` with every encoder.

    Returns (duration, starts, ends, vectors {space: (model, (n, dim))}, probs (model, labels, (n, C)) or None).
    Raises DecodeError for unreadable audio, TooLong when over `max_duration`.
    """
    if max_duration is not None:
        declared = probe_duration(path)
        if declared is not None and declared > max_duration:
            raise TooLong(f"{declared:.0f} s is longer than the {max_duration:.0f} s limit")
    feature_config = encoders[0].feature_config
    starts, ends, batch = [], [], []
    outs: dict[int, list] = {i: [] for i in range(len(encoders))}
    probs_out: list[np.ndarray] = []
    total = 0

    def flush():
        base = None
        for i, enc in enumerate(encoders):
            # a derived encoder (the joint space) maps the first encoder's output: the CNN runs once
            r = enc.encode_from(base) if hasattr(enc, "encode_from") else enc.encode_mels(batch)
            if i == 0:
                base = r
                if r.probs is not None:
                    probs_out.append(r.probs)
            outs[i].append(r.embeddings)
        batch.clear()

    def counted():
        nonlocal total
        for chunk in stream(path):
            total += chunk.size
            if max_duration is not None and total > max_duration * feature_config.sr:
                raise TooLong(f"longer than the {max_duration:.0f} s limit")
            yield chunk

    mel = SlidingLogMel(feature_config)  # overlapping windows share their FFT frames; same output as logmel()
    for seg in segments(counted(), seg_config, feature_config.sr):
        starts.append(seg.start)
        ends.append(seg.end)
        batch.append(mel(seg.audio, int(round(seg.start * feature_config.sr))))
        if len(batch) >= BATCH:
            flush()
    if batch:
        flush()
    duration = total / feature_config.sr
    if not starts:
        raise DecodeError(f"{path.name}: no sound (digital silence, or shorter than {seg_config.min_seconds} s)")
    vectors = {enc.space: (enc.name, np.concatenate(outs[i])) for i, enc in enumerate(encoders)}
    probs = None
    if probs_out:
        probs = (encoders[0].name, list(encoders[0].labels), np.concatenate(probs_out))
    return duration, np.asarray(starts), np.asarray(ends), vectors, probs


def to_record(fetched, digest: str, encoded) -> ClipRecord:
    duration, starts, ends, vectors, probs = encoded
    return ClipRecord(content_hash=digest, media_file=fetched.path, duration=duration, provenance=fetched.provenance,
                      starts=starts, ends=ends, vectors=vectors, probs=probs, move_media=fetched.owned)
