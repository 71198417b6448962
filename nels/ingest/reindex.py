"""Re-index a library with another model: the ingest pipeline over the library's own clips (reader: the
stored media files; mapper: decode + encode; writer: swap each clip's encodings atomically).

Per clip, the old vectors/probabilities are replaced in one transaction, so an interrupted re-index
leaves every clip valid; the library's model is switched first, and a re-run finishes the clips still
encoded by the old model.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nels.audio.segment import SegmentConfig
from nels.encoders.base import create_encoder
from nels.encoders.selection import encoders_for, library_encoders, primaries, record_model, split_spec, weights_of
from nels.ingest.mapper import encode_file
from nels.ingest.progress import AudioBar, AudioReporter, ReportWatcher, forget_report
from nels.ingest.runner import build_encoders
from nels.ingest.runners import Runner, make_runner
from nels.store.library import Library


@dataclass
class ReindexBuilder:
    """Builds, once per worker, the function (clip id, media path) -> (clip id, encoding or error)."""

    model: str
    progress_dir: str | None = None  # where workers report how far into a clip they are (seconds of audio)

    def __call__(self):
        encoders = build_encoders(self.model)

        def fn(task):
            cid, path = task[0], task[1]
            report = AudioReporter(self.progress_dir, cid) if self.progress_dir else None
            try:
                return cid, encode_file(Path(path), encoders, SegmentConfig(), on_audio=report), None
            except Exception as exc:  # noqa: BLE001 - a media file lost or damaged since ingest: report, go on
                return cid, None, str(exc)

        return fn


@dataclass
class ReindexPlan:
    """What `reindex` would do, computed without changing anything (the CLI shows it and asks first).

    current / target : the library's model spec now and after; model : the target's primary model name.
    clips : [(clip id, media path as the catalogue has it, duration)] still to encode; forced_until : resume point of a forced re-run.
    drop_spaces : vector spaces the target does not write (their vectors go, e.g. the joint space).
    drop_labels : classes the library knows now that the target's classifiers do not (its vocabulary shrinks).
    """

    current: str | None
    target: str
    model: str
    target_key: str
    forced_until: str
    clips: list = field(default_factory=list)
    drop_spaces: list = field(default_factory=list)
    drop_labels: list = field(default_factory=list)
    new_labels: list = field(default_factory=list)

    @property
    def audio_seconds(self) -> float:
        return float(sum(c[2] or 0.0 for c in self.clips))

    @property
    def drops(self) -> bool:
        """Whether the re-index loses something search uses now: a vector space or some classes."""
        return bool(self.drop_spaces or self.drop_labels)

    def describe(self) -> str:
        """What the plan loses, in words (empty when nothing)."""
        out = []
        if self.drop_labels:
            few = ", ".join(self.drop_labels[:8]) + (f" and {len(self.drop_labels) - 8} more"
                                                      if len(self.drop_labels) > 8 else "")
            out.append(f"drops {len(self.drop_labels)} of the library's classes ({few}): text search will no longer"
                       f" find them")
        if self.drop_spaces:
            out.append("deletes the vector space" + ("s " if len(self.drop_spaces) > 1 else " ")
                       + ", ".join(self.drop_spaces) + (" (text search by meaning)" if "joint" in self.drop_spaces
                                                        else ""))
        return "; ".join(out)


def plan_reindex(lib: Library, model: str | None) -> ReindexPlan:
    """What re-indexing `lib` with `model` (None: the library's own model) would do; changes nothing."""
    cat = lib.catalogue
    current = lib.get_meta("model")
    spec = model or current or "default"
    encoders = encoders_for(spec)
    enc = encoders[0]
    target = f"{enc.name}:{weights_of(enc)}"
    # Same model name, other (or unrecorded) weights: the per-clip model names cannot tell old vectors
    # from new ones, so every clip is re-encoded, in id order, with the progress kept in the library so
    # that an interrupted run resumes where it stopped.
    was = f"{lib.get_meta('model_name')}:{lib.get_meta('model_sha256') or ''}"
    if lib.get_meta("reindex_target") != target:
        forced = "0" if (lib.get_meta("model_name") == enc.name and was != target) else ""
    else:
        forced = lib.get_meta("reindex_done_until") or ""
    names = {e.space: e.name for e in encoders}
    old_spaces = [s for s in lib.spaces() if s not in names]

    def todo(cid: int) -> bool:
        if forced:
            return cid > int(forced)
        now = cat.clip_vector_models(cid)
        return not (all(now.get(sp) == nm for sp, nm in names.items()) and not (set(now) & set(old_spaces)))

    clips = [(r[0], r[1], float(r[2] or 0.0)) for r in cat.clips(("id", "media_path", "duration"))
             if todo(r[0])]
    known = {lb for m in cat.prob_models() for lb in cat.model_labels(m)}
    new = {lb for e in primaries(encoders) for lb in (e.labels or [])}
    return ReindexPlan(current, spec, enc.name, target, forced, clips, old_spaces if clips else [],
                       sorted(known - new) if clips and new else [], sorted(new - known))


def _from_stored_vectors(lib: Library, plan: ReindexPlan, progress: bool) -> dict | None:
    """A target that only adds classes beside the library's model (`nels train --add`: an encoder with `base` and
    `added_probs`) needs no decoding: its vectors are the base's, already stored, and its probabilities are the
    base's stored ones followed by the added classifier's on those vectors. Returns the report, or None when the
    plan is not of that kind (anything else is re-encoded from the audio)."""
    cat = lib.catalogue
    if plan.forced_until or plan.drops or not plan.clips:
        return None
    encoders = encoders_for(plan.target)
    added = {e.space: e for e in encoders if hasattr(e, "added_probs") and hasattr(e, "base")}
    if not added:
        return None
    names = {e.space: e.name for e in encoders}
    for cid, _, _ in plan.clips:  # every clip's stored vectors must be the base's (or already the target's)
        now = cat.clip_vector_models(cid)
        for space, nm in names.items():
            ok = {nm} | ({added[space].base.name} if space in added else set())
            if now.get(space) not in ok:
                return None
    todo = {c[0] for c in plan.clips}
    seg_clip = {sid: cid for cid in todo for sid in cat.segment_ids(cid)}
    vecs: dict[str, dict[int, np.ndarray]] = {sp: {} for sp in added}
    for space in added:
        for ids, block in cat.iter_vectors(space):
            for sid, v in zip(ids.tolist(), block):
                if sid in seg_clip:
                    vecs[space][sid] = v
    mats = []  # every classifier's stored rows, by segment
    for m in cat.prob_models():
        got = cat.prob_matrix(m)
        if got is not None:
            ids, mat, labels, _ = got
            mats.append((m, labels, {sid: r for r, sid in enumerate(ids.tolist())}, mat))
    bar = AudioBar("reindex (stored vectors)", enabled=progress)
    for c in plan.clips:
        bar.expect(c[0], c[2])
    done = 0
    for cid, _, secs in plan.clips:
        sids = cat.segment_ids(cid)
        vectors, probs, replaced = {}, [], set()
        for space, enc in added.items():
            v = np.stack([vecs[space][s] for s in sids])
            vectors[space] = (enc.name, v)
            base_rows = next(((lb, rows, mat) for m, lb, rows, mat in mats if m == enc.base.name), None)
            extra = enc.added_probs(v)
            if base_rows is not None:
                lb, rows, mat = base_rows
                p = np.concatenate([mat[[rows[s] for s in sids]], extra], axis=1)
                replaced.add(enc.base.name)
            else:
                p = extra
            probs.append((enc.name, list(enc.labels), p))
        for m, lb, rows, mat in mats:  # the other classifiers' rows stay as they are
            if m not in replaced and m not in {e.name for e in added.values()} and all(s in rows for s in sids):
                probs.append((m, lb, mat[[rows[s] for s in sids]]))
        lib.replace_encodings(cid, vectors, probs)
        bar.finish(cid, secs)
        done += 1
    bar.close()
    record_model(lib, plan.target, encoders[0])
    lib.set_meta("reindex_done_until", "")
    lib.forget()
    lib.save_indexes()
    return {"model": encoders[0].name, "spec": plan.target, "clips": done, "failed": 0,
            "audio_seconds": round(plan.audio_seconds, 2), "decoded": False}


def reindex(lib: Library, model: str | None, progress: bool = True, runner: Runner | None = None,
            plan: ReindexPlan | None = None) -> dict:
    """Re-encode the library's clips with `model` (None: its own model, for clips encoded by another one or
    by other weights). `plan` : a `plan_reindex` result the caller has shown (and had confirmed)."""
    cat = lib.catalogue
    plan = plan or plan_reindex(lib, model)
    fast = _from_stored_vectors(lib, plan, progress)
    if fast is not None:
        return fast
    spec = plan.target
    enc = create_encoder(split_spec(spec)[0])
    if lib.get_meta("reindex_target") != plan.target_key:
        lib.set_meta("reindex_target", plan.target_key)
        lib.set_meta("reindex_done_until", plan.forced_until)
    forced_until = plan.forced_until
    record_model(lib, spec, enc)
    encoders = library_encoders(lib, spec)
    names = {e.space: e.name for e in encoders}
    old_spaces = [s for s in lib.spaces() if s not in names]
    clips = plan.clips
    seconds = {c[0]: c[2] for c in clips}
    done = failed = 0
    skipped: list[dict] = []  # clips kept in place whose original is missing or changed: they keep their encodings
    runner = runner or make_runner()
    tmp = Path(tempfile.mkdtemp(prefix=f"ingest-{os.getpid()}-reindex-", dir=lib.path)) if progress else None
    bar = AudioBar("reindex", enabled=progress)
    for c in clips:
        bar.expect(c[0], c[2])
    try:
        with ReportWatcher(bar, tmp):
            def skip(cid: int, exc) -> None:
                print(f"skipped, its encodings kept: {exc}", file=sys.stderr)
                skipped.append({"clip_id": cid, "reason": exc.reason})
                bar.finish(cid, 0.0)

            # media on object storage is fetched to this machine's cache as each clip is handed out; an original
            # kept in place is verified first (a missing or changed one is skipped, said so, and loses nothing)
            todo = ((row[0], str(path)) for row, path in lib.readable_media(clips, on_skip=skip))
            for cid, encoded, error in runner.run(todo,
                                                  ReindexBuilder(spec, str(tmp) if tmp else None)):
                secs = seconds.get(cid, 0.0) if error is None else 0.0
                if tmp is not None:
                    forget_report(tmp, cid)
                bar.finish(cid, secs)
                if error is not None:
                    print(f"clip {cid}: {error}", file=sys.stderr)
                    failed += 1
                    continue
                _, starts, ends, vectors, probs = encoded
                n_before = len(cat.segment_ids(cid))
                if len(starts) != n_before:
                    print(f"clip {cid}: segmentation changed ({n_before} -> {len(starts)} segments), skipped",
                          file=sys.stderr)
                    failed += 1
                    continue
                lib.replace_encodings(cid, vectors, probs, drop_spaces=old_spaces + list(vectors))
                if forced_until:
                    lib.set_meta("reindex_done_until", str(cid))
                done += 1
        bar.close()
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    lib.set_meta("reindex_done_until", "")  # finished: the next reindex to this target has nothing forced
    lib.forget()
    lib.save_indexes()
    return {"model": enc.name, "spec": spec, "clips": done, "failed": failed + len(skipped), "skipped": skipped,
            "audio_seconds": round(plan.audio_seconds, 2)}
