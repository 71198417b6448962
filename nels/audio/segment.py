"""Cut a stream of samples into overlapping windows, skipping digital silence.

Windows are what NELS indexes, tags and returns: a search result points at a window's start and
end inside its clip. The defaults (2 s windows, 1 s hop) are justified in bench/RESULTS.md: short
enough that a result lands on the event, long enough to hold a whole dog bark or door knock.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from nels.config import SAMPLE_RATE


@dataclass(frozen=True)
class SegmentConfig:
    """How audio is windowed.

    window : seconds per segment.
    hop : seconds between segment starts (hop < window gives overlap).
    min_seconds : a tail or a whole clip shorter than this is dropped (too short to recognise).
    silence_peak : a window whose absolute peak is below this (-80 dBFS) is digital silence, skipped.
    """

    window: float = 2.0
    hop: float = 1.0
    min_seconds: float = 0.25
    silence_peak: float = 1e-4


@dataclass
class Segment:
    """One window of a clip: `audio` covers [start, end) seconds of the source."""

    start: float
    end: float
    audio: np.ndarray


def segments(chunks: Iterable[np.ndarray], config: SegmentConfig = SegmentConfig(),
             sr: int = SAMPLE_RATE) -> Iterator[Segment]:
    """Yield windows over an iterable of sample chunks (e.g. `nels.audio.stream(path)`).

    Memory is one window plus one chunk, whatever the length of the source. A clip shorter than a
    window yields one segment of its own length (never zero-padded: every encoder pools over time).
    Audio after the last full window (at least `min_seconds` of it) gets one more full-length window
    aligned to the end of the stream, so the end of every file is indexed.
    """
    win, hop = int(config.window * sr), int(config.hop * sr)
    min_len = int(config.min_seconds * sr)
    buf = np.zeros(0, dtype=np.float32)
    offset = 0  # sample index of buf[0] in the source
    emitted_until = 0  # end sample of the last full window
    last = np.zeros(0, dtype=np.float32)  # the last `win` samples seen, for an end-aligned tail window
    for chunk in chunks:
        chunk = chunk.astype(np.float32, copy=False)
        last = np.concatenate([last, chunk])[-win:]
        buf = np.concatenate([buf, chunk])
        while buf.size >= win:
            seg = buf[:win]
            if np.abs(seg).max() >= config.silence_peak:
                yield Segment(offset / sr, (offset + win) / sr, seg.copy())
            emitted_until = offset + win
            buf = buf[hop:]
            offset += hop
    end = offset + buf.size
    if emitted_until == 0:  # shorter than one window: the whole clip is the segment
        tail, start = last, 0
    else:  # audio after the last full window: one more window, aligned to the end
        tail, start = last, end - last.size
        if end - emitted_until < min_len:
            return
    if tail.size >= min_len and np.abs(tail).max() >= config.silence_peak:
        yield Segment(start / sr, end / sr, tail.copy())

def segment_array(audio: np.ndarray, config: SegmentConfig = SegmentConfig(), sr: int = SAMPLE_RATE) -> list[Segment]:
    """`segments` over one in-memory array."""
    return list(segments([audio], config, sr))

