"""Sound events of a file: per-segment class probabilities merged into timed events.

Two views of the same segments:

* `merge_events` (what `nels tag` prints): per label, the segments where it is above a threshold, merged into
  one event while they overlap, touch or are at most `max_gap` seconds apart (a short dropout does not split an
  event), events shorter than `min_duration` dropped. Several labels may be active at once.
* `label_runs` (the clip page's timeline): each segment's top label, consecutive segments with the same top
  label as one run; a run shorter than `min_duration` between others is absorbed by its neighbour (a one-segment
  flicker in an hour of rain is not an event), so an hour-long file shows tens of events, not thousands.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from nels.audio.decode import stream
from nels.audio.segment import SegmentConfig, segments
from nels.encoders.base import encode_segments
from nels.errors import ModelError

MAX_GAP_SECONDS = 1.0  # tag: an event bridges a dropout this long (two 2 s / 1 s segments missing)
RUN_MIN_SECONDS = 3.0  # clip page: a top-label run shorter than this is absorbed by its neighbour
_EPS = 1e-6


def merge_events(starts, ends, probs: np.ndarray, labels: list[str], threshold: float,
                 max_gap: float = MAX_GAP_SECONDS, min_duration: float = 0.0) -> list[dict]:
    """Per label, the segments where it is at or above `threshold` become events.

    Segments of one label join an event while each starts at most `max_gap` seconds after the event's end
    (overlapping and touching segments always join); events shorter than `min_duration` seconds are dropped.
    Returns events sorted by start: {label, start, end, prob (max over the event), segments}.
    """
    probs = np.asarray(probs)
    events, open_ = [], {}
    for i in range(len(starts)):
        active = set(np.nonzero(probs[i] >= threshold)[0].tolist())
        for j in list(open_):
            if starts[i] > open_[j]["end"] + max_gap + _EPS:
                events.append(open_.pop(j))
        for j in active:
            ev = open_.get(j)
            if ev is None:
                open_[j] = {"label": labels[j], "start": float(starts[i]), "end": float(ends[i]),
                            "prob": float(probs[i, j]), "segments": 1}
            else:
                ev["end"] = max(ev["end"], float(ends[i]))
                ev["prob"] = max(ev["prob"], float(probs[i, j]))
                ev["segments"] += 1
    events.extend(open_.values())
    events = [ev for ev in events if ev["end"] - ev["start"] >= min_duration - _EPS]
    for ev in events:
        ev["start"], ev["end"], ev["prob"] = round(ev["start"], 3), round(ev["end"], 3), round(ev["prob"], 4)
    return sorted(events, key=lambda e: (e["start"], -e["prob"]))


def label_runs(segments_: Sequence[dict], min_duration: float = RUN_MIN_SECONDS,
               max_gap: float = 0.0) -> list[dict]:
    """The timeline of a clip: runs of consecutive segments with the same top label.

    segments_ : [{segment_id, start, end, labels: [{label, prob}, ...] best first}, ...] in time order (a
        segment without labels is skipped).
    min_duration : a run shorter than this that touches a neighbouring run is absorbed by it (the neighbour with
        the same label on both sides, else the longer one); an isolated run (silence around it) is kept whole.
    max_gap : segments further apart than this (seconds between one's end and the next's start) never join.

    Returns [{label, start, end, prob (max top probability), segments: [ids]}, ...] in time order.
    """
    runs: list[dict] = []
    for s in segments_:
        if not s.get("labels"):
            continue
        top = s["labels"][0]
        last = runs[-1] if runs else None
        if last and last["label"] == top["label"] and s["start"] <= last["end"] + max_gap + _EPS:
            last["end"] = max(last["end"], s["end"])
            last["prob"] = max(last["prob"], float(top["prob"]))
            last["segments"].append(s["segment_id"])
        else:
            runs.append({"label": top["label"], "start": float(s["start"]), "end": float(s["end"]),
                         "prob": float(top["prob"]), "segments": [s["segment_id"]]})
    if min_duration <= 0:
        return runs

    def touches(a: dict, b: dict) -> bool:
        return b["start"] <= a["end"] + max_gap + _EPS

    def join(a: dict, b: dict, label: str, prob: float) -> dict:
        return {"label": label, "start": min(a["start"], b["start"]), "end": max(a["end"], b["end"]),
                "prob": prob, "segments": a["segments"] + b["segments"]}

    while len(runs) > 1:
        short = [i for i, r in enumerate(runs) if r["end"] - r["start"] < min_duration - _EPS
                 and ((i > 0 and touches(runs[i - 1], r)) or (i + 1 < len(runs) and touches(r, runs[i + 1])))]
        if not short:
            break
        i = min(short, key=lambda k: (runs[k]["end"] - runs[k]["start"], runs[k]["prob"]))
        r = runs[i]
        left = runs[i - 1] if i > 0 and touches(runs[i - 1], r) else None
        right = runs[i + 1] if i + 1 < len(runs) and touches(r, runs[i + 1]) else None
        if left and right and left["label"] == right["label"]:  # A b A -> one A
            merged = join(join(left, r, left["label"], max(left["prob"], right["prob"])), right, left["label"],
                          max(left["prob"], right["prob"]))
            runs[i - 1:i + 2] = [merged]
            continue
        into = max((n for n in (left, right) if n is not None), key=lambda n: n["end"] - n["start"])
        merged = join(into, r, into["label"], into["prob"])
        if into is left:
            runs[i - 1:i + 1] = [merged]
        else:
            runs[i:i + 2] = [merged]
    for r in runs:
        r["segments"].sort()
    return runs


def group_by_label(events: Sequence[dict]) -> list[dict]:
    """Events grouped by label: [{label, count, seconds, events: [...]}, ...], the most frequent label first."""
    groups: dict[str, dict] = {}
    for ev in events:
        g = groups.setdefault(ev["label"], {"label": ev["label"], "count": 0, "seconds": 0.0, "events": []})
        g["count"] += 1
        g["seconds"] += ev["end"] - ev["start"]
        g["events"].append(ev)
    out = sorted(groups.values(), key=lambda g: (-g["count"], -g["seconds"], g["label"]))
    for g in out:
        g["seconds"] = round(g["seconds"], 3)
    return out


#: the probability from which `nels tag` reports a label (its --threshold default), and search calls a class heard
TAG_THRESHOLD = 0.3


def tag_file(path: str | Path, encoder, threshold: float = TAG_THRESHOLD, batch: int = 64,
             max_gap: float = MAX_GAP_SECONDS, min_duration: float = 0.0,
             on_audio: Callable[[float], None] | None = None) -> list[dict]:
    """Tag a file of any length (streamed) with `encoder`'s classes (see `merge_events` for max_gap and
    min_duration). on_audio : called after each batch of segments with the seconds of audio done so far."""
    if not encoder.labels:
        raise ModelError(f"{encoder.name} has no classes to tag with; train one with 'nels train' or use the default")
    starts, ends, probs = [], [], []
    sr = encoder.sample_rate
    for out, _ in encode_segments(encoder, segments(stream(path, sr=sr), SegmentConfig(), sr), batch):
        starts.append(out.starts)
        ends.append(out.ends)
        probs.append(out.probs)
        if on_audio is not None and len(out.ends):
            on_audio(float(out.ends[-1]))
    if not starts:
        return []
    starts, ends = np.concatenate(starts), np.concatenate(ends)
    return merge_events(starts, ends, np.concatenate(probs), list(encoder.labels), threshold, max_gap, min_duration)
