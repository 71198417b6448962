"""Grow a real library to N segments for latency and load benchmarks.

Copies of the base library's clips are added with their vectors and probabilities jittered (so
the index is not full of exact duplicates); media files are shared with the original clip.

    python bench/build_big_library.py --base LIB --out BIG --segments 100000
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nels.library import Library  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--segments", type=int, default=100_000)
    a = ap.parse_args()
    out = Path(a.out)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(a.base, out)
    lib = Library(out)
    rng = np.random.default_rng(0)
    clips = lib.conn.execute("SELECT id, media_path, title, duration FROM clips").fetchall()
    base = {}
    for cid, media, title, dur in clips:
        segs = lib.conn.execute("SELECT id, start, end FROM segments WHERE clip_id=? ORDER BY id", (cid,)).fetchall()
        vec = {}
        for space, model in lib.conn.execute("SELECT DISTINCT space, model FROM vectors"):
            rows = [lib.conn.execute("SELECT vec FROM vectors WHERE space=? AND segment_id=?", (space, s[0])).fetchone()
                    for s in segs]
            vec[space] = (model, np.stack([np.frombuffer(r[0], np.float32) for r in rows]))
        pr = [lib.conn.execute("SELECT model, probs FROM probs WHERE segment_id=?", (s[0],)).fetchall() for s in segs]
        base[cid] = (media, title, dur, [s[1] for s in segs], [s[2] for s in segs], vec, pr)
    labels = {m: json.loads(lib.conn.execute("SELECT labels FROM models WHERE name=?", (m,)).fetchone()[0])
              for (m,) in lib.conn.execute("SELECT DISTINCT model FROM probs").fetchall()}  # every classifier
    n = lib.stats()["segments"]
    t = time.time()
    copy = 0
    c = lib.conn
    c.execute("BEGIN")
    while n < a.segments:
        cid = clips[copy % len(clips)][0]
        media, title, dur, starts, ends, vec, pr = base[cid]
        copy += 1
        cur = c.execute("INSERT INTO clips(content_hash, media_path, title, source_uri, duration, added_at)"
                        " VALUES(?,?,?,?,?,?)", (f"copy-{copy}", media, f"{title} (copy {copy})", f"copy:{copy}", dur, time.time()))
        new = cur.lastrowid
        seg_ids = [c.execute("INSERT INTO segments(clip_id, start, end) VALUES(?,?,?)", (new, s, e)).lastrowid
                   for s, e in zip(starts, ends)]
        for space, (m, v) in vec.items():
            j = v + 0.05 * rng.standard_normal(v.shape).astype(np.float32)
            j /= np.linalg.norm(j, axis=1, keepdims=True)
            c.executemany("INSERT INTO vectors(space, segment_id, model, vec) VALUES(?,?,?,?)",
                          [(space, sid, m, j[i].tobytes()) for i, sid in enumerate(seg_ids)])
        for sid, rows in zip(seg_ids, pr):
            tops = {}
            for m, blob in rows:
                p = np.frombuffer(blob, np.float32) * rng.uniform(0.8, 1.2, len(labels[m])).astype(np.float32)
                p /= p.sum()
                c.execute("INSERT INTO probs(segment_id, model, probs) VALUES(?,?,?)", (sid, m, p.tobytes()))
                for j in np.argsort(-p)[:5]:
                    tops[labels[m][j]] = max(tops.get(labels[m][j], 0.0), float(p[j]))
            c.executemany("INSERT INTO labels(segment_id, label, prob) VALUES(?,?,?)", [(sid, l, p) for l, p in tops.items()])
        n += len(seg_ids)
        if copy % 2000 == 0:
            c.execute("COMMIT")
            c.execute("BEGIN")
    c.execute("COMMIT")
    lib.save_indexes()
    print(f"{out}: {lib.stats()['segments']} segments, {lib.stats()['clips']} clips ({time.time() - t:.0f} s)")


if __name__ == "__main__":
    main()
