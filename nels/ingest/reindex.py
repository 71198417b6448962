"""Re-index a library with another model: the ingest pipeline over the library's own clips (reader: the
stored media files; mapper: decode + encode; writer: swap each clip's encodings atomically).

Per clip, the old vectors/probabilities are replaced in one transaction, so an interrupted re-index
leaves every clip valid; the library's model is switched first, and a re-run finishes the clips still
encoded by the old model.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from nels.audio.segment import SegmentConfig
from nels.encoders.base import create_encoder
from nels.encoders.selection import library_encoders, record_model, weights_of
from nels.ingest.mapper import encode_file
from nels.ingest.runner import build_encoders
from nels.ingest.runners import Runner, make_runner
from nels.store.library import Library


@dataclass
class ReindexBuilder:
    """Builds, once per worker, the function (clip id, media path) -> (clip id, encoding or error)."""

    model: str

    def __call__(self):
        encoders = build_encoders(self.model)

        def fn(task):
            cid, path = task
            try:
                return cid, encode_file(Path(path), encoders, SegmentConfig()), None
            except Exception as exc:  # noqa: BLE001 - a media file lost or damaged since ingest: report, go on
                return cid, None, str(exc)

        return fn


def reindex(lib: Library, model: str | None, progress: bool = True, runner: Runner | None = None) -> dict:
    from tqdm import tqdm

    cat = lib.catalogue
    spec = model or lib.get_meta("model") or "default"
    enc = create_encoder(spec)
    target = f"{enc.name}:{weights_of(enc)}"
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

    def todo(cid: int) -> bool:
        if forced_until:
            return cid > int(forced_until)
        current = cat.clip_vector_models(cid)
        return not (all(current.get(sp) == nm for sp, nm in names.items()) and not (set(current) & set(old_spaces)))

    clips = [(r[0], str(lib.path / r[1])) for r in cat.clips(("id", "media_path")) if todo(r[0])]
    done = failed = 0
    runner = runner or make_runner()
    bar = tqdm(total=len(clips), unit="clip", desc="reindex", disable=not progress, file=sys.stderr)
    for cid, encoded, error in runner.run(iter(clips), ReindexBuilder(spec)):
        bar.update(1)
        if error is not None:
            print(f"clip {cid}: {error}", file=sys.stderr)
            failed += 1
            continue
        _, starts, ends, vectors, probs = encoded
        n_before = len(cat.segment_ids(cid))
        if len(starts) != n_before:
            print(f"clip {cid}: segmentation changed ({n_before} -> {len(starts)} segments), skipped", file=sys.stderr)
            failed += 1
            continue
        lib.replace_encodings(cid, vectors, probs, drop_spaces=old_spaces + list(vectors))
        if forced_until:
            lib.set_meta("reindex_done_until", str(cid))
        done += 1
    bar.close()
    lib.set_meta("reindex_done_until", "")  # finished: the next reindex to this target has nothing forced
    lib.forget()
    lib.save_indexes()
    return {"model": enc.name, "clips": done, "failed": failed}
