"""Admin jobs (crawl, ingest): run in one background thread, one at a time, with status, progress and result.

A job opens its own `Library` (its own SQLite connection) in the worker thread; the website's
library sees the new clips on its next search (indexes re-sync from the catalogue).
"""
from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("nels.web")
MAX_KEPT = 100


@dataclass
class Job:
    id: int
    kind: str
    params: dict
    fn: Callable[[Any], dict]
    status: str = "queued"  # queued | running | done | failed
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    result: dict | None = None
    error: str | None = None

    def to_dict(self, progress: dict | None = None) -> dict:
        return {"id": self.id, "kind": self.kind, "params": self.params, "status": self.status,
                "created_at": self.created_at, "started_at": self.started_at, "finished_at": self.finished_at,
                "progress": progress, "result": self.result, "error": self.error}


class JobRunner:
    def __init__(self, library_path: Path):
        self.path = Path(library_path)
        self._jobs: dict[int, Job] = {}
        self._ids = itertools.count(1)
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, kind: str, params: dict, fn: Callable[[Any], dict]) -> Job:
        job = Job(next(self._ids), kind, params, fn)
        with self._lock:
            self._jobs[job.id] = job
            done = [j for j in self._jobs.values() if j.status in ("done", "failed")]
            for old in sorted(done, key=lambda j: j.id)[:max(0, len(self._jobs) - MAX_KEPT)]:
                del self._jobs[old.id]
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="nels-jobs", daemon=True)
                self._thread.start()
        self._queue.put(job)
        return job

    def list(self) -> list[Job]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: -j.id)

    def get(self, job_id: int) -> Job | None:
        return self._jobs.get(job_id)

    def _work(self) -> None:
        from nels.errors import NelsError
        from nels.index.library import Library

        while True:
            job = self._queue.get()
            if job is None:
                return
            job.status, job.started_at = "running", time.time()
            lib = None
            try:
                lib = Library(self.path, create=False)
                job.result = job.fn(lib)
                job.status = "done"
            except NelsError as exc:
                job.status, job.error = "failed", str(exc)
            except Exception as exc:  # keep the worker alive; the log has the traceback
                log.error("job %s failed:\n%s", job.id, traceback.format_exc())
                job.status, job.error = "failed", f"internal error ({exc.__class__.__name__})"
            finally:
                job.finished_at = time.time()
                if lib is not None:
                    try:
                        lib.close()
                    except Exception:
                        pass

    def stop(self) -> None:
        self._queue.put(None)
