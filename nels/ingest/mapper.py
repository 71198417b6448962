"""Mapper: one item -> a ClipRecord (fetch, hash, decode, segment, encode), as a pure function of the
item and the encoders, so that any runner can call it in any process.

Decoding streams (30 s chunks), so memory is flat in the file's length: only the per-segment
embeddings (a few hundred floats per second of audio) accumulate.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from nels.audio.decode import probe_duration, stream
from nels.audio.segment import SegmentConfig, segments
from nels.encoders.base import Encoder, encode_segments_with, group_encoders
from nels.errors import DecodeError, SourceError
from nels.sources.source import Item, Source
from nels.store.library import ClipRecord, content_hash, file_state  # noqa: F401 - content_hash: re-exported


def all_finite(vectors: dict, probs) -> bool:
    """Whether every vector and class probability is a finite number (probs: one (model, labels, p) or a list)."""
    arrays = [v for _, v in vectors.values()]
    if probs is not None:
        arrays += [p for _, _, p in ([probs] if isinstance(probs, tuple) else probs)]
    return all(np.isfinite(np.asarray(a)).all() for a in arrays)


class TooLong(Exception):
    """The item exceeds the max duration: skipped, not failed."""


def encode_file(path: Path, encoders: Sequence[Encoder], seg_config: SegmentConfig = SegmentConfig(),
                max_duration: float | None = None, info: dict | None = None,
                on_audio: Callable[[float], None] | None = None) -> tuple[float, np.ndarray, np.ndarray, dict, tuple | None]:
    """Decode, segment and encode `path` with every encoder: each acoustic encoder reads the same segments
    (decoded once, at the first encoder's rate); derived ones (the joint space) map the acoustic encoder
    before them.

    Returns (duration, starts, ends, vectors {space: (model, (n, dim))}, probs: None, (model, labels,
    (n, C)) for one classifier, or a list of them for several). Raises DecodeError for unreadable audio,
    TooLong when over `max_duration`. info : filled by decoding (see `nels.audio.decode.stream`).
    on_audio : called after each batch of segments with the seconds of audio encoded so far (progress).
    """
    groups = group_encoders(encoders)
    sr = groups[0][0].sample_rate
    if max_duration is not None:
        declared = probe_duration(path)
        if declared is not None and declared > max_duration:
            raise TooLong(f"{declared:.0f} s is longer than the {max_duration:.0f} s limit")
    total = 0

    def counted():
        nonlocal total
        for chunk in stream(path, sr=sr, info=info):
            total += chunk.size
            if max_duration is not None and total > max_duration * sr:
                raise TooLong(f"longer than the {max_duration:.0f} s limit")
            yield chunk

    ordered = [e for g in groups for e in (g[0], *g[1])]  # encoders in output order
    starts, ends = [], []
    outs: list[list[np.ndarray]] = [[] for _ in ordered]
    probs_out: list[list[np.ndarray]] = [[] for _ in groups]
    for batch in encode_segments_with(groups, segments(counted(), seg_config, sr), sr):
        starts.append(batch[0][0].starts)
        ends.append(batch[0][0].ends)
        flat = [o for out, more in batch for o in (out, *more)]
        for i, o in enumerate(flat):
            outs[i].append(o.embeddings)
        for g, (out, _) in enumerate(batch):
            if out.probs is not None:
                probs_out[g].append(out.probs)
        if on_audio is not None:
            on_audio(float(batch[0][0].ends[-1]))
    duration = total / sr
    if not starts:
        raise DecodeError(f"{path.name}: no sound (digital silence, or shorter than {seg_config.min_seconds} s)")
    vectors = {enc.space: (enc.name, np.concatenate(outs[i])) for i, enc in enumerate(ordered)}
    classified = [(g[0].name, list(g[0].labels), np.concatenate(po)) for g, po in zip(groups, probs_out) if po]
    probs = None if not classified else classified[0] if len(classified) == 1 else classified
    # decoding refuses NaN/inf/absurd samples; this catches an encoder that still makes a non-finite number
    # (the catalogue would refuse it, or worse, store it and poison every search)
    if not all_finite(vectors, probs):
        raise DecodeError(f"{path.name}: the model gave non-finite outputs for this audio; refused")
    return duration, np.concatenate(starts), np.concatenate(ends), vectors, probs


@dataclass
class Work:
    """One crawl item to process (picklable: it crosses process boundaries)."""

    item_id: int
    item: Item
    attempts: int


@dataclass
class Outcome:
    """What processing one item gave. status: added (record to write) | duplicate (content already
    stored: clip_id) | skipped (reason) | failed (error; permanent or to retry)."""

    item_id: int
    uri: str
    status: str
    record: ClipRecord | None = None
    clip_id: int | None = None
    content_hash: str | None = None
    error: str | None = None
    permanent: bool = False
    original: tuple[str, int, int] | None = None  # kept in place: (path, size, mtime_ns) as hashed (a duplicate too)


PERMANENT_HTTP = (400, 401, 403, 404, 410)


def process_item(work: Work, source: Source, encoders: Sequence[Encoder], workdir: Path,
                 max_duration: float | None = None, known: Callable[[str], int | None] | None = None,
                 on_audio: Callable[[float], None] | None = None, in_place: bool = False) -> Outcome:
    """Fetch, hash, decode, segment and encode one item. Writes nothing to the library.

    known : content hash -> the id of a clip that already has it (skips encoding a duplicate), or None.
    on_audio : progress, seconds of the item's audio encoded so far (see `encode_file`).
    in_place : a user's local file is to be referenced, not copied: its size and time are taken around the
        hash (a file written meanwhile fails, to be tried again). Downloads are stored as always.
    A fetched temporary file is deleted unless it is handed on in the record (`move_media`).
    """
    uri = work.item.uri
    try:
        fetched = source.fetch(work.item, workdir)
    except SourceError as exc:
        # the SSRF guard's "refused, HOST resolves to ..." is final; a "Connection refused" (a server down) is not
        permanent = any(f"HTTP {c}" in str(exc) for c in PERMANENT_HTTP) or ": refused, " in str(exc)
        return Outcome(work.item_id, uri, "failed", error=str(exc), permanent=permanent)
    keep = False
    try:
        referenced = in_place and not fetched.owned
        before = file_state(fetched.path) if referenced else None
        digest = content_hash(fetched.path)
        original = None
        if referenced:
            if file_state(fetched.path) != before:
                return Outcome(work.item_id, uri, "failed", error="the file changed while it was read; try again")
            original = (str(fetched.path), *before)
        existing = known(digest) if known is not None else None
        if existing is not None:
            return Outcome(work.item_id, uri, "duplicate", clip_id=existing, content_hash=digest, original=original)
        try:
            info: dict = {}
            duration, starts, ends, vectors, probs = encode_file(fetched.path, encoders, SegmentConfig(), max_duration,
                                                                 info, on_audio)
            media_ext = info["extension"]  # by content, as decoding found it: a WAV named x.html is stored as .wav
        except TooLong as exc:
            return Outcome(work.item_id, uri, "skipped", error=str(exc))
        except DecodeError as exc:
            return Outcome(work.item_id, uri, "failed", error=str(exc), permanent=True)
        rec = ClipRecord(content_hash=digest, media_file=fetched.path, duration=duration,
                         provenance=fetched.provenance, starts=starts, ends=ends, vectors=vectors, probs=probs,
                         move_media=fetched.owned, media_ext=media_ext, original=original[1:] if original else None)
        keep = True
        return Outcome(work.item_id, uri, "added", record=rec, content_hash=digest, original=original)
    finally:
        if not keep and fetched.owned and fetched.path.exists():
            fetched.path.unlink(missing_ok=True)
