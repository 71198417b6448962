"""Sound events of a file: per-segment class probabilities merged into timed events."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from nels.audio.decode import stream
from nels.audio.segment import SegmentConfig, segments
from nels.encoders.base import encode_segments
from nels.errors import ModelError


def merge_events(starts, ends, probs: np.ndarray, labels: list[str], threshold: float) -> list[dict]:
    """Consecutive (overlapping or touching) segments where a label is above `threshold` become one event.

    Returns events sorted by start: {label, start, end, prob (max over the event), segments}.
    """
    events, open_ = [], {}
    for i in range(len(starts)):
        active = set(np.nonzero(probs[i] >= threshold)[0].tolist())
        for j in list(open_):
            if j not in active or starts[i] > open_[j]["end"] + 1e-6:
                events.append(open_.pop(j))
        for j in active:
            ev = open_.get(j)
            if ev is None:
                open_[j] = {"label": labels[j], "start": float(starts[i]), "end": float(ends[i]),
                            "prob": float(probs[i, j]), "segments": 1}
            else:
                ev["end"] = float(ends[i])
                ev["prob"] = max(ev["prob"], float(probs[i, j]))
                ev["segments"] += 1
    events.extend(open_.values())
    for ev in events:
        ev["start"], ev["end"], ev["prob"] = round(ev["start"], 3), round(ev["end"], 3), round(ev["prob"], 4)
    return sorted(events, key=lambda e: (e["start"], -e["prob"]))


def tag_file(path: str | Path, encoder, threshold: float = 0.3, batch: int = 64) -> list[dict]:
    """Tag a file of any length (streamed) with `encoder`'s classes."""
    if not encoder.labels:
        raise ModelError(f"{encoder.name} has no classes to tag with; train one with 'nels train' or use the default")
    starts, ends, probs = [], [], []
    sr = encoder.sample_rate
    for out, _ in encode_segments(encoder, segments(stream(path, sr=sr), SegmentConfig(), sr), batch):
        starts.append(out.starts)
        ends.append(out.ends)
        probs.append(out.probs)
    if not starts:
        return []
    starts, ends = np.concatenate(starts), np.concatenate(ends)
    return merge_events(starts, ends, np.concatenate(probs), list(encoder.labels), threshold)
