"""Re-index a library with another model: decode each stored clip again, re-encode, swap atomically.

Per clip, the old vectors/probabilities are replaced in one transaction, so an interrupted
re-index leaves every clip valid; the library's model is switched first, and a re-run finishes
the clips still encoded by the old model.
"""
from __future__ import annotations

import sys

from nels.audio.segment import SegmentConfig
from nels.store.library import Library
from nels.ingest.mapper import encode_file
from nels.encoders.base import load_encoder


def reindex(lib: Library, model: str | None, progress: bool = True) -> dict:
    from tqdm import tqdm

    from nels.ingest.runner import library_encoders, record_model

    spec = model or lib.get_meta("model") or "default"
    enc = load_encoder(spec)
    target = f"{enc.name}:{getattr(enc, 'meta', {}).get('weights_sha256') or ''}"
    # Same model name, other (or unrecorded) weights: the per-clip model names cannot tell old vectors
    # from new ones, so every clip is re-encoded, in id order, with the progress kept in the library so
    # that an interrupted run resumes where it stopped.
    was = f"{lib.get_meta('model_name')}:{lib.get_meta('model_sha256') or ''}"
    if lib.get_meta("reindex_target") != target:
        lib.set_meta("reindex_target", target)
        lib.set_meta("reindex_done_until", "0" if (lib.get_meta("model_name") == enc.name and was != target) else "")
    forced_until = lib.get_meta("reindex_done_until")
    record_model(lib, spec, enc)
    encoders = library_encoders(lib, spec)
    names = {e.space: e.name for e in encoders}
    old_spaces = [s for s in lib.spaces() if s not in names]
    clips = lib.conn.execute("SELECT id, media_path FROM clips ORDER BY id").fetchall()
    done = failed = 0
    for cid, media in tqdm(clips, unit="clip", desc="reindex", disable=not progress, file=sys.stderr):
        current = {r[0]: r[1] for r in lib.conn.execute(
            "SELECT v.space, MIN(v.model) FROM vectors v JOIN segments s ON s.id=v.segment_id WHERE s.clip_id=?"
            " GROUP BY v.space", (cid,))}
        if forced_until:
            if cid <= int(forced_until):
                continue
        elif all(current.get(sp) == nm for sp, nm in names.items()) and not (set(current) & set(old_spaces)):
            continue
        seg = lib.conn.execute("SELECT start, end FROM segments WHERE clip_id=? ORDER BY id", (cid,)).fetchall()
        try:
            _, starts, ends, vectors, probs = encode_file(lib.path / media, encoders, SegmentConfig())
        except Exception as exc:  # a media file lost or damaged since ingest: report, keep going
            print(f"clip {cid}: {exc}", file=sys.stderr)
            failed += 1
            continue
        if len(starts) != len(seg):
            print(f"clip {cid}: segmentation changed ({len(seg)} -> {len(starts)} segments), skipped", file=sys.stderr)
            failed += 1
            continue
        lib.replace_encodings(cid, vectors, probs, drop_spaces=old_spaces + list(vectors))
        if forced_until:
            lib.set_meta("reindex_done_until", str(cid))
        done += 1
    lib.set_meta("reindex_done_until", "")  # finished: the next reindex to this target has nothing forced
    lib._cache.clear()
    lib.save_indexes()
    return {"model": enc.name, "clips": done, "failed": failed}
