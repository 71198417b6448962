"""The Encoder seam: a waveform in, per-segment embeddings (and class probabilities where there are
classes) out. Each encoder owns its front end (log-mel, or whatever its network reads) and its sample
rate; NELS's pipeline only cuts audio into segments and hands them over.

    encoder = create_encoder("cnn:path/to/model")      # or "default", "baseline", a model folder, ...
    out = encoder.encode(waveform, sample_rate)         # Encoded: embeddings, probs, labels, starts, ends

Encoders are made from a spec string through a registry (`nels.encoders.registry`):
`register_encoder("tones", factory)` makes `create_encoder("tones")` and `create_encoder("tones:ARG")` call
`factory(arg)`. A new encoder is one new file plus that one registration line (tests/plugins/tones.py).

Implementations: `baseline` (training-free log-mel statistics), `cnn` (the trained sound-event CNN);
derived encoders (the joint space) map another encoder's output with `encode_from(base)`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np

from nels.audio.features import FeatureConfig, SlidingLogMel
from nels.audio.segment import Segment, SegmentConfig, segment_array
from nels.config import ENCODE_BATCH, SEGMENT_HOP_SECONDS, SEGMENT_SECONDS


@dataclass
class Encoded:
    """What an encoder says about n segments.

    embeddings : (n, dim) float32, L2-normalised (inner product = cosine).
    probs : (n, n_classes) float32 class probabilities, or None for encoders without classes.
    labels : the class names, index-aligned with `probs` (None without classes).
    raw : (n, d) the un-normalised embeddings a classifier head reads (the learning loop re-trains on
        them), or None where the encoder has no such layer.
    starts, ends : (n,) seconds of each segment in the waveform (set by `encode`), or None.
    """

    embeddings: np.ndarray
    probs: np.ndarray | None = None
    labels: list[str] | None = None
    raw: np.ndarray | None = None
    starts: np.ndarray | None = None
    ends: np.ndarray | None = None


Frontend = Callable[[np.ndarray, int], Any]  # (segment samples, start sample in its stream) -> features


@runtime_checkable
class Encoder(Protocol):
    name: str  # identifies the model version; stored with every vector it made
    space: str  # the vector index this encoder writes ("baseline", "cnn", ...)
    dim: int
    labels: list[str] | None  # class names, index-aligned with Encoded.probs
    sample_rate: int  # the rate its front end reads
    window: float  # seconds per segment when it frames a waveform itself (`encode`)
    hop: float

    def frontend(self) -> Frontend:
        """A front end for one stream of segments (it may share work between overlapping windows, so
        make one per clip and call it in stream order)."""
        ...

    def encode_features(self, features: Sequence[Any]) -> Encoded:
        """Encode what the front end produced for a batch of segments."""
        ...

    def encode(self, waveform: np.ndarray, sample_rate: int) -> Encoded:
        """Frame `waveform` into the encoder's segments and encode them (see `encode_waveform`)."""
        ...


@runtime_checkable
class TextEncoderSeam(Protocol):
    """The text side: sentences -> (n, dim) float32 L2-normalised embeddings. `create_text_encoder(spec)`
    makes one by name ("minilm", the default: all-MiniLM-L6-v2); `register_text_encoder` adds kinds."""

    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        ...


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Linear-interpolation resampling (used only when a caller's rate differs from the encoder's;
    decoding already produces the encoder's rate through FFmpeg's resampler)."""
    if sr_in == sr_out:
        return np.asarray(x, dtype=np.float32)
    n = int(round(len(x) * sr_out / sr_in))
    return np.interp(np.arange(n) * (sr_in / sr_out), np.arange(len(x)), x).astype(np.float32)


def concat(parts: Sequence[Encoded]) -> Encoded:
    """One Encoded from consecutive batches."""
    def cat(name):
        vals = [getattr(p, name) for p in parts]
        return None if not vals or vals[0] is None else np.concatenate(vals)

    labels = parts[0].labels if parts else None
    return Encoded(cat("embeddings"), cat("probs"), labels, cat("raw"), cat("starts"), cat("ends"))


def encode_segments(encoder: Encoder, segments: Iterable[Segment], batch: int = ENCODE_BATCH,
                    derived: Sequence[Any] = ()) -> Iterator[tuple[Encoded, list[Encoded]]]:
    """Encode a stream of segments (in stream order, at the encoder's sample rate) in batches.

    Yields, per batch, the encoder's Encoded (with starts/ends) and the outputs of `derived` encoders
    (each maps the base output with `encode_from`, so the base network runs once for all of them)."""
    for outs in encode_segments_with(group_encoders([encoder, *derived]), segments, encoder.sample_rate, batch):
        yield outs[0]


def group_encoders(encoders: Sequence[Any]) -> list[tuple[Encoder, list]]:
    """[(acoustic encoder, [encoders derived from it]), ...] from an ingest-ordered list (a derived encoder,
    one with `encode_from`, follows the acoustic encoder it maps)."""
    groups: list[tuple[Encoder, list]] = []
    for e in encoders:
        if hasattr(e, "encode_from"):
            if not groups:
                raise ValueError(f"{e.name} maps another encoder's output, but none comes before it")
            groups[-1][1].append(e)
        else:
            groups.append((e, []))
    return groups


def encode_segments_with(groups: Sequence[tuple[Encoder, Sequence[Any]]], segments: Iterable[Segment],
                         sample_rate: int, batch: int = ENCODE_BATCH) -> Iterator[list[tuple[Encoded, list[Encoded]]]]:
    """Several acoustic encoders (each with its derived ones) over one stream of segments at `sample_rate`
    (each encoder gets them at its own rate). Yields, per batch, one (Encoded, [derived Encoded]) per group."""
    fronts = [g[0].frontend() for g in groups]
    feats: list[list] = [[] for _ in groups]
    starts, ends = [], []

    def flush():
        result = []
        for (enc, derived), f in zip(groups, feats):
            out = enc.encode_features(f)
            out.starts, out.ends = np.asarray(starts, dtype=np.float64), np.asarray(ends, dtype=np.float64)
            if out.labels is None and enc.labels is not None:
                out.labels = list(enc.labels)
            result.append((out, [d.encode_from(out) for d in derived]))
            f.clear()
        starts.clear(), ends.clear()
        return result

    for seg in segments:
        for (enc, _), front, f in zip(groups, fronts, feats):
            audio = seg.audio if enc.sample_rate == sample_rate else resample(seg.audio, sample_rate, enc.sample_rate)
            f.append(front(audio, int(round(seg.start * enc.sample_rate))))
        starts.append(seg.start)
        ends.append(seg.end)
        if len(starts) >= batch:
            yield flush()
    if starts:
        yield flush()


def encode_waveform(encoder: Encoder, waveform: np.ndarray, sample_rate: int, whole_if_empty: bool = False) -> Encoded:
    """`Encoder.encode` for encoders that frame with `SegmentConfig(encoder.window, encoder.hop)`:
    resample to the encoder's rate, cut into windows (digital silence skipped), encode.

    whole_if_empty : when no window holds sound (too short, or silent), encode the whole waveform as one
        segment instead of returning zero segments.
    """
    x = resample(np.asarray(waveform, dtype=np.float32).reshape(-1), sample_rate, encoder.sample_rate)
    segs = segment_array(x, SegmentConfig(window=encoder.window, hop=encoder.hop), encoder.sample_rate)
    if not segs and whole_if_empty and x.size:
        segs = [Segment(0.0, x.size / encoder.sample_rate, x)]
    if not segs:
        return Encoded(np.zeros((0, encoder.dim), np.float32),
                       None if encoder.labels is None else np.zeros((0, len(encoder.labels)), np.float32),
                       None if encoder.labels is None else list(encoder.labels), None,
                       np.zeros(0), np.zeros(0))
    return concat([out for out, _ in encode_segments(encoder, segs)])


def encode_clips(encoder: Encoder, waveforms: Sequence[np.ndarray]) -> Encoded:
    """One segment per waveform (each already at the encoder's rate): row i encodes waveforms[i] whole."""
    out = []
    for i in range(0, len(waveforms), ENCODE_BATCH):
        batch = waveforms[i:i + ENCODE_BATCH]
        out.append(encoder.encode_features([encoder.frontend()(np.asarray(w, np.float32), 0) for w in batch]))
    return concat(out) if out else Encoded(np.zeros((0, encoder.dim), np.float32))


class LogMelEncoder:
    """Base of the encoders that read NELS's log-mel front end (`nels.audio.features`) over the
    library's 2 s / 1 s windows. Subclasses set name, space, dim, labels, feature_config and implement
    `encode_mels(mels)`."""

    feature_config: FeatureConfig = FeatureConfig()
    window: float = SEGMENT_SECONDS
    hop: float = SEGMENT_HOP_SECONDS

    @property
    def sample_rate(self) -> int:
        return self.feature_config.sr

    def frontend(self) -> Frontend:
        # overlapping windows share their FFT frames; the output equals logmel(window) exactly
        return SlidingLogMel(self.feature_config)

    def encode_features(self, features: Sequence[Any]) -> Encoded:
        return self.encode_mels(features)

    def encode(self, waveform: np.ndarray, sample_rate: int) -> Encoded:
        return encode_waveform(self, waveform, sample_rate)


# the registry lives in nels.encoders.registry (it loads implementations by name, so that no encoder module
# and this one import each other); re-exported here for callers of the seam
from nels.encoders.registry import (DEFAULT_MODEL_DIR, create_encoder, create_text_encoder,  # noqa: E402,F401
                                    encoder_kinds, load_encoder, register_encoder, register_text_encoder)
