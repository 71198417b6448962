"""Runner: order the reader, mapper and writer over every due item, with retries and progress.

`SequentialRunner` runs in-process, one item at a time (decoding and the model already use the
cores). The `Runner` seam is where a distributed engine (Ray, Dask) plugs in for crawls at scale:
it only has to call `process_item` on workers and `writer.write` in one place.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

from nels.audio.segment import SegmentConfig
from nels.sources import state
from nels.sources.source import Source, expand_inputs
from nels.errors import DecodeError, ModelMismatchError, SourceError
from nels.store.library import Library
from nels.ingest import mapper, reader, writer
from nels.encoders.base import Encoder, load_encoder


@dataclass
class IngestOptions:
    max_duration: float | None = None
    max_items: int | None = None
    rate_limit: float | None = None
    retries: int = 3
    progress: bool = True


@dataclass
class IngestReport:
    added: list[int] = field(default_factory=list)
    duplicates: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds_of_audio: float = 0.0
    wall_seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"added": len(self.added), "clip_ids": self.added, "duplicates": self.duplicates,
                "skipped": [{"uri": u, "reason": r} for u, r in self.skipped],
                "failed": [{"uri": u, "error": e} for u, e in self.failed],
                "audio_seconds": round(self.seconds_of_audio, 2), "wall_seconds": round(self.wall_seconds, 2),
                "x_realtime": round(self.seconds_of_audio / self.wall_seconds, 1) if self.wall_seconds else None}


class Runner(Protocol):
    def run(self, lib: Library, sources: Sequence[Source], encoders: Sequence[Encoder],
            options: IngestOptions) -> IngestReport: ...


def record_model(lib: Library, spec, enc) -> None:
    """Remember which model (and which exact weights) the library's vectors come from."""
    lib.set_meta("model", str(spec))
    lib.set_meta("model_name", enc.name)
    lib.set_meta("model_sha256", getattr(enc, "meta", {}).get("weights_sha256") or "")


def check_model(lib: Library, enc, spec=None) -> None:
    """LibraryError unless `enc` is the model the library was indexed with (name, and weights where the
    library recorded them): vectors of two models are not comparable, and an upgraded default model
    must not be mixed silently with the old one's index."""
    name, sha = lib.get_meta("model_name"), lib.get_meta("model_sha256")
    mine = getattr(enc, "meta", {}).get("weights_sha256") or ""
    if (name is not None and name != enc.name) or (sha and mine and sha != mine):
        what = f"{enc.name}" + (f" (weights {mine[:12]})" if name == enc.name else "")
        raise ModelMismatchError(f"this library is indexed with {name}" + (f" (weights {sha[:12]})" if name == enc.name else "")
                           + f"; the model now at '{spec or lib.get_meta('model') or 'default'}' is {what}: run"
                           f" 'nels reindex{' --model ' + str(spec) if spec else ''}' to re-encode the library with it")


def library_encoders(lib: Library, model: str | None) -> list[Encoder]:
    """The encoder a library ingests with: fixed at the first ingest; another one needs `nels reindex`."""
    current = lib.get_meta("model")
    if model is None:
        model = current or "default"
    enc = load_encoder(model)
    if current is None or lib.stats()["segments"] == 0:
        record_model(lib, model, enc)
    else:
        check_model(lib, enc, model)
    encoders: list[Encoder] = [enc]
    from nels.encoders.joint import joint_encoder_for  # the joint space rides on the acoustic encoder

    joint = joint_encoder_for(enc)
    if joint is not None:
        encoders.append(joint)
    return encoders


def _bar(total: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, unit="item", desc=desc, disable=not enabled, file=sys.stderr, dynamic_ncols=True,
                smoothing=0.1)


class SequentialRunner:
    def run(self, lib: Library, sources: Sequence[Source], encoders: Sequence[Encoder],
            options: IngestOptions) -> IngestReport:
        report = IngestReport()
        t0 = time.time()
        owner, listing_errors = reader.discover(lib.conn, list(sources))
        report.failed.extend(listing_errors)
        ids = sorted(owner)
        workdir = Path(tempfile.mkdtemp(prefix="ingest-", dir=lib.path))
        limiter = reader.RateLimiter(options.rate_limit)
        try:
            rows = state.due(lib.conn, ids, options.retries)
            bar = _bar(len(rows), options.progress, "ingest")
            pending = rows
            while pending:
                retry = []
                for row in pending:
                    if options.max_items is not None and len(report.added) >= options.max_items:
                        break
                    outcome = self._one(lib, owner[row["id"]], row, encoders, options, workdir, limiter, report)
                    if outcome == "retry":
                        retry.append(row["id"])
                    else:
                        bar.update(1)
                    bar.set_postfix(added=len(report.added), failed=len(report.failed),
                                    xrt=f"{report.seconds_of_audio / max(time.time() - t0, 1e-9):.0f}")
                if not retry or (options.max_items is not None and len(report.added) >= options.max_items):
                    break
                wait = min(r["next_attempt_at"] for r in lib.conn.execute(
                    f"SELECT next_attempt_at FROM items WHERE id IN ({','.join('?' * len(retry))})", retry)) - time.time()
                time.sleep(max(0.0, min(wait, 30.0)))
                pending = state.due(lib.conn, retry, options.retries)
            # items still failed after their last attempt
            for r in lib.conn.execute(f"SELECT uri, error FROM items WHERE status='failed' AND id IN "
                                      f"({','.join('?' * len(ids)) or 'NULL'})", ids):
                report.failed.append((r[0], r[1]))
            bar.close()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
            lib.save_indexes()
        report.wall_seconds = time.time() - t0
        return report

    def _one(self, lib, source, row, encoders, options, workdir, limiter, report) -> str:
        uri = row["uri"]
        try:
            fetched = reader.fetch(source, row, workdir, limiter)
        except SourceError as exc:
            permanent = any(f"HTTP {c}" in str(exc) for c in (400, 401, 403, 404, 410)) or "refused" in str(exc)
            state.mark_failed(lib.conn, row["id"], str(exc), permanent, options.retries)
            last = permanent or row["attempts"] + 1 >= options.retries
            return "failed" if last else "retry"
        try:
            digest = mapper.content_hash(fetched.path)
            existing = lib.clip_by_hash(digest)
            if existing is not None:
                writer.link_duplicate(lib, row["id"], existing, digest)
                report.duplicates += 1
                return "duplicate"
            try:
                encoded = mapper.encode_file(fetched.path, encoders, SegmentConfig(), options.max_duration)
            except mapper.TooLong as exc:
                state.mark_skipped(lib.conn, row["id"], str(exc))
                report.skipped.append((uri, str(exc)))
                return "skipped"
            except DecodeError as exc:
                state.mark_failed(lib.conn, row["id"], str(exc), True, options.retries)
                return "failed"
            rec = mapper.to_record(fetched, digest, encoded)
            clip_id = writer.write(lib, rec, row["id"])
            report.added.append(clip_id)
            report.seconds_of_audio += rec.duration
            return "added"
        finally:
            if fetched.owned and fetched.path.exists():
                fetched.path.unlink(missing_ok=True)


def ingest(lib: Library, inputs: list[str], model: str | None = None, options: IngestOptions | None = None,
           allow_private: bool = True, query: str | None = None, runner: Runner | None = None) -> IngestReport:
    """Ingest files, folders, URLs and URL lists into `lib` (the Python API behind `nels ingest`)."""
    options = options or IngestOptions()
    encoders = library_encoders(lib, model)
    return (runner or SequentialRunner()).run(lib, expand_inputs(inputs, allow_private, query), encoders, options)


def crawl(lib: Library, queries: list[str], per_query: int = 10, model: str | None = None,
          options: IngestOptions | None = None, runner: Runner | None = None) -> IngestReport:
    """Search through yt-dlp for each query and ingest what it finds (`nels crawl`)."""
    from nels.sources.ytdlp import YtDlpSource

    options = options or IngestOptions()
    encoders = library_encoders(lib, model)
    src = YtDlpSource(searches=queries, per_query=per_query, max_duration=options.max_duration)
    return (runner or SequentialRunner()).run(lib, [src], encoders, options)


# -- CLI -------------------------------------------------------------------------------------------
def _print_report(rep: IngestReport, as_json: bool) -> int:
    from nels.cli import print_json

    d = rep.to_dict()
    if as_json:
        print_json(d)
    else:
        print(f"added {d['added']} clips ({d['audio_seconds']:.0f} s of audio, {d['x_realtime'] or 0:.0f}x real time),"
              f" {d['duplicates']} duplicates, {len(d['skipped'])} skipped, {len(d['failed'])} failed")
        for s in d["skipped"]:
            print(f"  skipped {s['uri']}: {s['reason']}")
        for f in d["failed"]:
            print(f"  FAILED  {f['uri']}: {f['error']}", file=sys.stderr)
    return 1 if rep.failed else 0


def _options(args) -> IngestOptions:
    return IngestOptions(max_duration=args.max_duration, max_items=args.max_items, rate_limit=args.rate_limit,
                         retries=args.retries, progress=not args.json and sys.stderr.isatty())


def cli_ingest(args) -> int:
    with Library(args.library) as lib:
        rep = ingest(lib, args.inputs, args.model, _options(args))
    return _print_report(rep, args.json)


def cli_crawl(args) -> int:
    with Library(args.library) as lib:
        rep = crawl(lib, args.queries, args.per_query, args.model, _options(args))
    return _print_report(rep, args.json)
