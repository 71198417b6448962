"""Choosing the segment window: audio->audio retrieval on ESC-50 fold 1 for several window/hop pairs.

A clip scores against another by its best segment pair (max cosine), which is how search ranks a
clip by its best-matching segment. Measured with the training-free baseline encoder (fair to every
window; the CNN was trained on 2 s crops) and, with --model, a trained encoder as well.

    python bench/bench_segment.py [--model default]
"""
from __future__ import annotations

import argparse
import csv
import time

import numpy as np

from common import esc50, one_core

one_core()

from nels.audio.decode import decode  # noqa: E402
from nels.audio.segment import SegmentConfig, segment_array  # noqa: E402
from nels.encoders.base import encode_audio, load_encoder  # noqa: E402
from nels.metrics import average_precision  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="baseline")
    a = ap.parse_args()
    root = esc50()
    rows = [r for r in csv.DictReader(open(root / "meta" / "esc50.csv")) if r["fold"] == "1"]
    stems = {p.stem: p for p in (root / "audio").iterdir()}
    audio = [decode(stems[r["filename"][:-4]]) for r in rows]
    y = np.array([int(r["target"]) for r in rows])
    enc = load_encoder(a.model)
    print(f"encoder {enc.name}, {len(rows)} clips of ESC-50 fold 1")
    for win, hop in [(0.5, 0.25), (1.0, 0.5), (2.0, 1.0), (3.0, 1.5), (5.0, 2.5)]:
        t = time.perf_counter()
        cfg = SegmentConfig(window=win, hop=hop)
        vecs, owner = [], []
        for i, x in enumerate(audio):
            segs = [s.audio for s in segment_array(x, cfg)]
            if segs:
                vecs.append(encode_audio(enc, segs).embeddings)
                owner += [i] * len(segs)
        V, owner = np.concatenate(vecs), np.array(owner)
        S = V @ V.T
        n = len(audio)
        clip_sim = np.full((n, n), -np.inf)
        for i in range(n):  # max over segment pairs
            rows_i = S[owner == i]
            if rows_i.size:
                m = rows_i.max(0)
                np.maximum.at(clip_sim[i], owner, m)
        aps = []
        for i in range(n):
            s = clip_sim[i].copy()
            s[i] = -np.inf
            order = np.argsort(-s)[:-1]
            aps.append(average_precision(y[order] == y[i], int((y == y[i]).sum()) - 1))
        print(f"window {win:>3} s hop {hop:>4} s: {len(V):>5} segments ({len(V) / n:.1f}/clip),"
              f" audio->audio mAP {np.mean(aps):.4f}  ({time.perf_counter() - t:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
