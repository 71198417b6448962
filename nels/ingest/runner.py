"""The ingest pipeline: reader (sources -> due items) -> mapper (fetch, decode, segment, encode: a pure
function, run by a runner in this or other processes) -> writer (one transaction per clip, here).

Ingest, crawl and reindex are this pipeline over different readers. Retries, backoff and dedupe live in
the catalogue (the crawl table), so a re-run after any crash resumes and nothing is stored twice.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from nels.config import CLAIM_STALE_SECONDS, STALE_TEMP_SECONDS
from nels.encoders.selection import encoders_for, library_encoders
from nels.errors import LibraryError
from nels.audio.decode import probe_duration
from nels.ingest import reader, writer
from nels.ingest.mapper import Work, process_item
from nels.ingest.progress import AudioBar, AudioReporter, ReportWatcher, forget_report
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
    in_place: bool = False  # local files are referenced where they are (verified by hash), not copied into media/


@dataclass
class IngestReport:
    added: list[int] = field(default_factory=list)
    duplicates: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds_of_audio: float = 0.0
    wall_seconds: float = 0.0
    elsewhere: int = 0  # items another ingest (of the same library) was processing: left to it
    in_place: int = 0  # of the added clips, those kept in place (the user's file referenced, not copied)
    relinked: int = 0  # clips kept in place whose missing or changed original was found again at an input's path

    def to_dict(self) -> dict:
        return {"added": len(self.added), "clip_ids": self.added, "duplicates": self.duplicates,
                "in_place": self.in_place, "relinked": self.relinked,
                "in_progress_elsewhere": self.elsewhere,
                "skipped": [{"uri": u, "reason": r} for u, r in self.skipped],
                "failed": [{"uri": u, "error": e} for u, e in self.failed],
                "audio_seconds": round(self.seconds_of_audio, 2), "wall_seconds": round(self.wall_seconds, 2),
                "x_realtime": round(self.seconds_of_audio / self.wall_seconds, 1) if self.wall_seconds else None}


def build_encoders(spec: str) -> list:
    """The encoders of a library's model spec (see nels.encoders.selection.encoders_for)."""
    return encoders_for(spec)


@dataclass
class IngestBuilder:
    """Builds, once per worker, the function that maps (Work, Source) -> Outcome (picklable)."""

    model: str
    library: str
    workdir: str
    max_duration: float | None = None
    progress_dir: str | None = None  # where workers report how far into an item they are (seconds of audio)
    catalogue: str | None = None  # the library's catalogue (a PostgreSQL URL or a file); None: <library>/nels.db
    in_place: bool = False  # reference local files where they are (see IngestOptions)

    def __call__(self):
        encoders = build_encoders(self.model)
        catalogue = Catalogue(self.catalogue or Path(self.library) / "nels.db")  # dedupe before encoding
        workdir = Path(self.workdir)

        def fn(task):
            work, source = task
            return process_item(work, source, encoders, workdir, self.max_duration, known=catalogue.clip_by_hash,
                                on_audio=AudioReporter(self.progress_dir, work.item_id) if self.progress_dir else None,
                                in_place=self.in_place)

        return fn


def _local_duration(work: Work) -> float | None:
    """The declared duration of a local file item (about 1 ms: the container's header), else None."""
    return probe_duration(work.item.uri) if work.item.kind == "file" else work.item.duration


def run(lib: Library, sources: Sequence[Source], model: str | None, options: IngestOptions,
        runner: Runner | None = None) -> IngestReport:
    """Discover every source's items, then process the due ones with `runner` and write them here."""
    if options.in_place and lib.uri:
        raise LibraryError(f"--in-place keeps files where they are on this machine; the library {lib.uri} is on"
                           f" object storage, where every machine must read its media: ingest without --in-place")
    # checks (or fixes, on a new library) the model the library uses
    # (its note, that YAMNet is missing, shows with or without a progress bar: it says what the library will hear)
    library_encoders(lib, model, note=lambda m: print(f"note: {m}", file=sys.stderr))
    spec = lib.get_meta("model") or "default"
    runner = runner or make_runner()
    report = IngestReport()
    t0 = time.time()
    cat = lib.catalogue
    clean_stale(lib)  # temp folders and claims of runs that were killed
    owner, listing_errors = reader.discover(cat, list(sources))
    report.failed.extend(listing_errors)
    ids = sorted(owner)
    token = run_token()
    workdir = Path(tempfile.mkdtemp(prefix=f"ingest-{os.getpid()}-", dir=lib.path))
    limiter = reader.RateLimiter(options.rate_limit)
    progress_dir = workdir / "progress" if options.progress else None
    if progress_dir is not None:
        progress_dir.mkdir()
    build = IngestBuilder(spec, str(lib.path), str(workdir), options.max_duration,
                          str(progress_dir) if progress_dir else None, catalogue=str(lib.catalogue.location),
                          in_place=options.in_place)
    full = lambda: options.max_items is not None and len(report.added) >= options.max_items  # noqa: E731
    failure: BaseException | None = None
    watcher = None
    try:
        pending = reader.due_work(cat, ids, options.retries)
        # progress in seconds of audio, not items: an hour-long file moves the bar while it is encoded
        bar = AudioBar("ingest", enabled=options.progress)
        watcher = ReportWatcher(bar, progress_dir, pending=[(w.item_id, w) for w in pending], probe=_local_duration)
        watcher.__enter__()
        while pending:
            retry = []

            def tasks():
                for w in pending:
                    if full():
                        return
                    # claimed before it is fetched: another run over the same inputs leaves it to this one
                    if not cat.claim_item(w.item_id, token, options.retries):
                        report.elsewhere += int(cat.item_claimed_elsewhere(w.item_id, token))
                        bar.finish(w.item_id, 0.0)
                        continue
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
                    report.in_place += out.record.original is not None
                elif got == "duplicate":
                    report.duplicates += 1
                elif got == "relinked":
                    report.relinked += 1
                elif got == "skipped":
                    report.skipped.append((out.uri, out.error))
                if got == "failed" and not out.permanent and _attempts(pending, out.item_id) + 1 < options.retries:
                    retry.append(out.item_id)
                else:
                    if progress_dir is not None:
                        forget_report(progress_dir, out.item_id)
                    bar.finish(out.item_id, out.record.duration if got == "added" and out.record else 0.0)
                bar.note(added=len(report.added), failed=len(report.failed))
            if not retry or full():
                break
            time.sleep(max(0.0, min(cat.next_attempt_at(retry) - time.time(), 30.0)))
            pending = reader.due_work(cat, retry, options.retries)
        report.failed.extend(cat.failed_items(ids))  # items still failed after their last attempt
        watcher.__exit__(None, None, None)
        bar.close()
        watcher = None
    except BaseException as exc:
        failure = exc
        raise
    finally:
        if watcher is not None:
            watcher.__exit__(None, None, None)
        shutil.rmtree(workdir, ignore_errors=True)
        for step in (lambda: cat.release_claims(token), lib.save_indexes):
            try:
                step()
            except Exception:
                if failure is None:  # never hide the error that stopped the run (a full disk) behind this one
                    raise
    report.wall_seconds = time.time() - t0
    return report


def run_token() -> str:
    """Who claims items: this host, this process and a nonce (two runs in one process differ)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def clean_stale(lib: Library) -> None:
    """What killed runs left behind: `ingest-PID-*` temp folders (partial downloads) and `*.PID.part` media of
    processes that no longer exist (older `ingest-*` folders after an hour), and their item claims."""
    now = time.time()
    for d in lib.path.glob("ingest-*"):
        m = re.fullmatch(r"ingest-(\d+)-.*", d.name)
        try:
            stale = not _alive(int(m.group(1))) if m else now - d.stat().st_mtime > STALE_TEMP_SECONDS
        except OSError:
            continue
        if stale and d.is_dir():
            shutil.rmtree(d, ignore_errors=True)
    for part in (lib.path / "media").glob("*/*.part"):
        m = re.fullmatch(r".*\.(\d+)\.part", part.name)
        if m and not _alive(int(m.group(1))):
            part.unlink(missing_ok=True)
    host = socket.gethostname()
    for owner, since in lib.catalogue.claim_owners().items():
        o_host, _, rest = owner.partition(":")
        pid = rest.partition(":")[0]
        dead = o_host == host and pid.isdigit() and not _alive(int(pid))
        if dead or now - (since or 0) > CLAIM_STALE_SECONDS:
            lib.catalogue.release_claims(owner)


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
