"""Progress counted in seconds of audio (ingest, reindex, tag): an hour-long file moves the bar while it is
being encoded, with the rate as "x real time" and an ETA, where a bar of files would sit at 0/1.

Workers (this process or the pool runner's) report how far into an item they are through small files in a
folder (`AudioReporter`, one file per item, replaced atomically); the driving process reads them
(`read_reports`) and draws one `AudioBar`.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Callable


def clock(seconds: float) -> str:
    """12.3 -> '0:12', 3725 -> '1:02:05'."""
    s = int(max(0.0, seconds) + 0.5)
    h, m = divmod(s, 3600)
    m, s = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def describe(done: float, total: float | None, elapsed: float) -> str:
    """'12:03 of 28:00 audio · 36x real time · ETA 0:27' (the bar's text; rate and ETA once measurable)."""
    parts = [f"{clock(done)} of {clock(total)} audio" if total else f"{clock(done)} audio"]
    if elapsed > 0 and done > 0:
        rate = done / elapsed
        parts.append(f"{rate:.0f}x real time" if rate >= 10 else f"{rate:.1f}x real time")
        if total and total > done:
            parts.append(f"ETA {clock((total - done) / rate)}")
    return " · ".join(parts)


def _line_every() -> float:
    """Seconds between two progress lines when the output is not a terminal (`NELS_PROGRESS_EVERY`, 30)."""
    from nels.config import PROGRESS_EVERY

    try:
        return max(0.0, float(PROGRESS_EVERY.get()))
    except ValueError:
        return float(PROGRESS_EVERY.default)


class AudioBar:
    """A progress bar in seconds of audio: finished items (`finish`) plus the partial progress of items in
    flight (`partial`); `add_total` grows the total as durations become known.

    On a terminal it is a bar redrawn in place. Where the output is not a terminal (a log file, nohup, a
    service), it writes a plain line every `NELS_PROGRESS_EVERY` seconds (30) ("ingest: 12:03 of 28:00 audio · 36x real
    time · ETA 0:27") and, if it wrote any, a last one at the end: a job shorter than that stays silent.
    enabled : False shows nothing at all (--json, quiet callers).
    """

    def __init__(self, desc: str, total: float | None = None, enabled: bool = True, file=None):
        from tqdm import tqdm

        file = file or sys.stderr
        try:
            tty = file.isatty()
        except (AttributeError, ValueError):
            tty = False
        self.enabled = enabled
        self.desc, self.file = desc, file
        self.lines = enabled and not tty  # plain lines instead of a bar
        self.line_every = _line_every()
        self._lines_written = 0
        self._last_line = time.monotonic()
        self.done = 0.0
        self.partials: dict = {}
        self.finished: set = set()  # keys done: a late report of theirs is ignored
        self.expected: dict = {}  # key -> the seconds of it counted in the total
        self.total = total
        self.t0 = time.monotonic()
        self._lock = threading.Lock()
        self.bar = tqdm(total=1000, desc=desc, disable=not enabled or self.lines, file=file, dynamic_ncols=True,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}|", mininterval=0.2)
        self.text = self.extra = ""
        self._shown = 0.0
        self._draw()

    @property
    def position(self) -> float:
        return self.done + sum(self.partials.values())

    def _draw(self, force: bool = False) -> None:
        pos = self.position
        total = self.total if self.total and self.total >= pos else (pos if self.total else None)
        self.text = describe(pos, total, time.monotonic() - self.t0)
        self._show(self.text + self.extra, force)

    def _show(self, text: str, force: bool = False) -> None:
        if self.lines:
            self._line(text, force)
            return
        now = time.monotonic()
        if not force and now - self._shown < 0.1:  # at most 10 redraws a second (100k items announce themselves)
            return
        self._shown = now
        pos, total = self.position, self.total
        self.bar.n = int(1000 * min(1.0, pos / total)) if total else 0
        self.bar.bar_format = "{desc}: {percentage:3.0f}%|{bar}| " + text.replace("{", "{{").replace("}", "}}")
        self.bar.refresh()

    def _line(self, text: str, last: bool = False) -> None:
        now = time.monotonic()
        if (last and self._lines_written) or now - self._last_line >= self.line_every:
            self._last_line = now
            self._lines_written += 1
            try:
                print(f"{self.desc}: {text}", file=self.file, flush=True)
            except (OSError, ValueError):  # a closed or broken log: progress is cosmetic
                self.lines = False

    def expect(self, key, seconds: float) -> None:
        """Item `key` holds `seconds` of audio: add it to the total (once)."""
        with self._lock:
            key = str(key)
            if key in self.expected or key in self.finished:
                return
            self.expected[key] = max(0.0, float(seconds))
            self.total = (self.total or 0.0) + self.expected[key]
            self._draw()

    def partial(self, key, seconds: float) -> None:
        """Item `key` (in flight) is `seconds` in."""
        with self._lock:
            key = str(key)
            if key in self.finished:
                return
            self.partials[key] = max(self.partials.get(key, 0.0), float(seconds))
            self._draw()

    def finish(self, key, seconds: float) -> None:
        """Item `key` is done with `seconds` of audio (0 for a failed or skipped item): it leaves the partials,
        and the total counts what it held rather than what was expected of it."""
        with self._lock:
            key = str(key)
            self.finished.add(key)
            self.partials.pop(key, None)
            seconds = max(0.0, float(seconds))
            self.done += seconds
            self.total = (self.total or 0.0) - self.expected.pop(key, 0.0) + seconds
            self._draw()

    def note(self, **fields) -> None:
        """Extra fields after the audio figures (added=3, failed=0)."""
        with self._lock:
            self.extra = " · " + ", ".join(f"{k} {v}" for k, v in fields.items())
            self._show(self.text + self.extra)

    def close(self) -> None:
        with self._lock:
            self._draw(force=True)
            self.bar.close()


class AudioReporter:
    """Worker side: `report(seconds)` records how far into item `key` the worker is (a file in `folder`)."""

    def __init__(self, folder: str | os.PathLike | None, key):
        self.file = Path(folder) / f"{key}.progress" if folder else None

    def __call__(self, seconds: float) -> None:
        if self.file is None:
            return
        tmp = self.file.with_suffix(f".{os.getpid()}.tmp")
        try:
            tmp.write_text(f"{float(seconds):.3f}")
            os.replace(tmp, self.file)
        except OSError:  # progress is cosmetic: never fail an item for it
            pass


def read_reports(folder: str | os.PathLike) -> dict[str, float]:
    """Driver side: {item key: seconds done} of the items in flight."""
    out = {}
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return out
    for e in entries:
        if e.name.endswith(".progress"):
            try:
                out[e.name[:-len(".progress")]] = float(Path(e.path).read_text() or 0)
            except (OSError, ValueError):
                continue
    return out


def forget_report(folder: str | os.PathLike, key) -> None:
    (Path(folder) / f"{key}.progress").unlink(missing_ok=True)


class ReportWatcher:
    """Driver side: a thread that moves `bar`'s partial progress from the report files every `interval` s, and
    (optionally) adds durations to its total as `probe` finds them for `pending` [(key, item)], off the main
    thread."""

    def __init__(self, bar: AudioBar, folder, interval: float = 0.5, pending: list | None = None,
                 probe: Callable[[object], float | None] | None = None):
        self.bar, self.folder, self.interval = bar, folder, interval
        self.pending, self.probe = list(pending or []), probe
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="nels-progress", daemon=True)

    def __enter__(self):
        if self.bar.enabled:
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()

    def _run(self) -> None:
        for key, item in self.pending:  # the total first (about 1 ms per local file), then the partials
            if self.stop.is_set():
                return
            try:
                d = self.probe(item) if self.probe else None
            except Exception:  # noqa: BLE001 - an unreadable file is reported by the mapper, not here
                d = None
            if d:
                self.bar.expect(key, d)
        while not self.stop.wait(self.interval):
            for key, secs in read_reports(self.folder).items():
                self.bar.partial(key, secs)
