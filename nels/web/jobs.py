"""Admin jobs (crawl, ingest), kept in the library's `jobs` table so that every server process sees them.

A job is data (a kind and its JSON parameters), not a closure: whichever `nels serve` worker process
accepted it, any worker's runner thread may run it. One job runs at a time per library: a runner claims
the oldest queued job only while no other job is running (a claim is one `BEGIN IMMEDIATE` transaction).
A job left 'running' by a process that has died (a killed server) is marked failed when it is noticed;
crawls and ingests resume where they stopped when queued again.

A job opens its own `Library` (its own SQLite connection) in the runner thread; the website sees the new
clips on its next search (indexes re-sync from the catalogue).
"""
from __future__ import annotations

import logging
import os
import threading
import traceback
from typing import Any, Callable

from nels.store.catalogue import MAX_KEPT_JOBS, Catalogue
from nels.store.library import catalogue_location

log = logging.getLogger("nels.web")
MAX_KEPT = MAX_KEPT_JOBS  # finished jobs kept (older ones are forgotten)
POLL_SECONDS = 2.0  # how often an idle runner looks for jobs queued by other server processes


def _crawl(lib, p: dict) -> dict:
    from nels.ingest import runner

    return runner.crawl(lib, p["queries"], p["per_query"],
                        options=runner.IngestOptions(max_duration=p.get("max_duration"), rate_limit=0.5,
                                                     progress=False)).to_dict()


def _ingest(lib, p: dict) -> dict:
    from nels.ingest import runner

    return runner.ingest(lib, p["urls"], options=runner.IngestOptions(max_duration=p.get("max_duration"),
                                                                      progress=False),
                         allow_private=False).to_dict()


HANDLERS: dict[str, Callable[[Any, dict], dict]] = {"crawl": _crawl, "ingest": _ingest}


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _public(job: dict | None) -> dict | None:
    """A job as the API shows it (the pid of the process running it stays inside)."""
    if job is not None:
        job.pop("pid", None)
    return job


class JobRunner:
    """Queue and run admin jobs of one library (see the module docstring)."""

    def __init__(self, library_path, handlers: dict[str, Callable[[Any, dict], dict]] | None = None):
        from pathlib import Path

        self.path = Path(library_path)
        self.handlers = handlers or HANDLERS
        self.catalogue = Catalogue(catalogue_location(self.path))  # one connection per thread
        self._lock = threading.Lock()  # guards the runner thread's start
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None

    # -- the queue ---------------------------------------------------------------------------------------
    def submit(self, kind: str, params: dict) -> dict:
        if kind not in self.handlers:
            raise ValueError(f"unknown job kind {kind!r}")
        job_id = self.catalogue.submit_job(kind, params)  # also forgets finished jobs past the newest MAX_KEPT
        self.start()
        self._wake.set()
        return self.get(job_id)

    def list(self) -> list[dict]:
        self._reap()
        return [_public(j) for j in self.catalogue.jobs(MAX_KEPT)]

    def get(self, job_id: int) -> dict | None:
        self._reap()
        return _public(self.catalogue.job(job_id))

    def _reap(self) -> None:
        """Jobs 'running' in a process that no longer exists will never finish: say so."""
        for job_id, pid in self.catalogue.running_jobs():
            if not _alive(pid):
                self.catalogue.finish_job(job_id, "failed", error="interrupted: the server process running it"
                                          " stopped; queue it again (crawls and ingests resume where they stopped)",
                                          only_if_running=True)

    def _claim(self) -> dict | None:
        """The oldest queued job, marked running by this process; None when one is already running."""
        self._reap()
        return _public(self.catalogue.claim_job(os.getpid()))

    def _finish(self, job_id: int, status: str, result: dict | None = None, error: str | None = None) -> None:
        self.catalogue.finish_job(job_id, status, result=result, error=error)

    # -- the runner thread ---------------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop = False
                self._thread = threading.Thread(target=self._work, name="nels-jobs", daemon=True)
                self._thread.start()

    def resume(self) -> None:
        """Start the runner when jobs are waiting (queued by a server that stopped before running them);
        called when a server starts."""
        if self.catalogue.has_queued_jobs():
            self.start()

    def _work(self) -> None:
        from nels.errors import NelsError
        from nels.library import Library

        while not self._stop:
            job = self._claim()
            if job is None:
                self._wake.wait(POLL_SECONDS)
                self._wake.clear()
                continue
            lib = None
            try:
                lib = Library(self.path, create=False)
                self._finish(job["id"], "done", result=self.handlers[job["kind"]](lib, job["params"]))
            except NelsError as exc:
                self._finish(job["id"], "failed", error=str(exc))
            except Exception as exc:  # keep the runner alive; the log has the traceback
                log.error("job %s failed:\n%s", job["id"], traceback.format_exc())
                self._finish(job["id"], "failed", error=f"internal error ({exc.__class__.__name__})")
            finally:
                if lib is not None:
                    try:
                        lib.close()
                    except Exception:  # noqa: BLE001
                        pass

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
