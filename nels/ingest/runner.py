"""The ingest pipeline: reader (sources -> due items) -> mapper (fetch, decode, segment, encode: a pure
function, run by a runner in this or other processes) -> writer (one transaction per clip, here).

Ingest, crawl and reindex are this pipeline over different readers. Retries, backoff and dedupe live in
the catalogue (the crawl table), so a re-run after any crash resumes and nothing is stored twice.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from nels.encoders.base import create_encoder
from nels.encoders.joint import joint_encoder_for
from nels.encoders.selection import library_encoders
from nels.ingest import reader, writer
from nels.ingest.mapper import Work, process_item
from nels.ingest.runners import Runner, make_runner
from nels.sources.route import expand_inputs
from nels.sources.source import Source
from nels.store.catalogue import Catalogue
from nels.store.library import Library


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


def build_encoders(spec: str) -> list:
    """The encoders of a library's model spec: the acoustic one, then its joint space if it has one."""
    enc = create_encoder(spec)
    joint = joint_encoder_for(enc)
    return [enc] + ([joint] if joint is not None else [])


@dataclass
class IngestBuilder:
    """Builds, once per worker, the function that maps (Work, Source) -> Outcome (picklable)."""

    model: str
    library: str
    workdir: str
    max_duration: float | None = None

    def __call__(self):
        encoders = build_encoders(self.model)
        catalogue = Catalogue(Path(self.library) / "nels.db")  # dedupe before encoding
        workdir = Path(self.workdir)

        def fn(task):
            work, source = task
            return process_item(work, source, encoders, workdir, self.max_duration, known=catalogue.clip_by_hash)

        return fn


def _bar(total: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, unit="item", desc=desc, disable=not enabled, file=sys.stderr, dynamic_ncols=True,
                smoothing=0.1)


def run(lib: Library, sources: Sequence[Source], model: str | None, options: IngestOptions,
        runner: Runner | None = None) -> IngestReport:
    """Discover every source's items, then process the due ones with `runner` and write them here."""
    library_encoders(lib, model)  # checks (or fixes, on a new library) the model the library uses
    spec = lib.get_meta("model") or "default"
    runner = runner or make_runner()
    report = IngestReport()
    t0 = time.time()
    cat = lib.catalogue
    owner, listing_errors = reader.discover(cat, list(sources))
    report.failed.extend(listing_errors)
    ids = sorted(owner)
    workdir = Path(tempfile.mkdtemp(prefix="ingest-", dir=lib.path))
    limiter = reader.RateLimiter(options.rate_limit)
    build = IngestBuilder(spec, str(lib.path), str(workdir), options.max_duration)
    full = lambda: options.max_items is not None and len(report.added) >= options.max_items  # noqa: E731
    try:
        pending = reader.due_work(cat, ids, options.retries)
        bar = _bar(len(pending), options.progress, "ingest")
        while pending:
            retry = []

            def tasks():
                for w in pending:
                    if full():
                        return
                    if w.item.kind != "file":
                        limiter.wait()
                    yield w, owner[w.item_id]

            for out in runner.run(tasks(), build):
                if full() and out.status == "added":  # processed beyond the cap: not written
                    if out.record.move_media:
                        out.record.media_file.unlink(missing_ok=True)
                    continue
                got = writer.write(lib, out, options.retries)
                if got == "added":
                    report.added.append(out.clip_id)
                    report.seconds_of_audio += out.record.duration
                elif got == "duplicate":
                    report.duplicates += 1
                elif got == "skipped":
                    report.skipped.append((out.uri, out.error))
                if got == "failed" and not out.permanent and _attempts(pending, out.item_id) + 1 < options.retries:
                    retry.append(out.item_id)
                else:
                    bar.update(1)
                bar.set_postfix(added=len(report.added), failed=len(report.failed),
                                xrt=f"{report.seconds_of_audio / max(time.time() - t0, 1e-9):.0f}")
            if not retry or full():
                break
            time.sleep(max(0.0, min(cat.next_attempt_at(retry) - time.time(), 30.0)))
            pending = reader.due_work(cat, retry, options.retries)
        report.failed.extend(cat.failed_items(ids))  # items still failed after their last attempt
        bar.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        lib.save_indexes()
    report.wall_seconds = time.time() - t0
    return report


def _attempts(pending: list[Work], item_id: int) -> int:
    return next((w.attempts for w in pending if w.item_id == item_id), 0)


def ingest(lib: Library, inputs: list[str], model: str | None = None, options: IngestOptions | None = None,
           allow_private: bool = True, query: str | None = None, runner: Runner | None = None) -> IngestReport:
    """Ingest files, folders, URLs and URL lists into `lib` (the Python API behind `nels ingest`)."""
    options = options or IngestOptions()
    return run(lib, expand_inputs(inputs, allow_private, query), model, options, runner)


def crawl(lib: Library, queries: list[str], per_query: int = 10, model: str | None = None,
          options: IngestOptions | None = None, runner: Runner | None = None) -> IngestReport:
    """Search through yt-dlp for each query and ingest what it finds (`nels crawl`)."""
    from nels.sources.ytdlp import YtDlpSource

    options = options or IngestOptions()
    src = YtDlpSource(searches=queries, per_query=per_query, max_duration=options.max_duration)
    return run(lib, [src], model, options, runner)
