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

import json
import logging
import os
import threading
import time
import traceback
from typing import Any, Callable

from nels.store import schema as db

log = logging.getLogger("nels.web")
MAX_KEPT = 100
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


def _row(r) -> dict:
    d = dict(r)
    for k in ("params", "result"):
        d[k] = json.loads(d[k]) if d.get(k) else ({} if k == "params" else None)
    d.pop("pid", None)
    return d


class JobRunner:
    """Queue and run admin jobs of one library (see the module docstring)."""

    def __init__(self, library_path, handlers: dict[str, Callable[[Any, dict], dict]] | None = None):
        from pathlib import Path

        self.path = Path(library_path)
        self.handlers = handlers or HANDLERS
        self._conn = db.connect(self.path / "nels.db")
        self._lock = threading.Lock()  # the connection is shared by request threads
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None

    # -- the queue ---------------------------------------------------------------------------------------
    def submit(self, kind: str, params: dict) -> dict:
        if kind not in self.handlers:
            raise ValueError(f"unknown job kind {kind!r}")
        with self._lock:
            cur = self._conn.execute("INSERT INTO jobs(kind, params, status, created_at) VALUES(?, ?, 'queued', ?)",
                                     (kind, json.dumps(params), time.time()))
            job_id = cur.lastrowid
            self._conn.execute("DELETE FROM jobs WHERE status IN ('done', 'failed') AND id NOT IN "
                               "(SELECT id FROM jobs ORDER BY id DESC LIMIT ?)", (MAX_KEPT,))
        self.start()
        self._wake.set()
        return self.get(job_id)

    def list(self) -> list[dict]:
        self._reap()
        with self._lock:
            return [_row(r) for r in self._conn.execute("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (MAX_KEPT,))]

    def get(self, job_id: int) -> dict | None:
        self._reap()
        with self._lock:
            r = self._conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _row(r) if r is not None else None

    def _reap(self) -> None:
        """Jobs 'running' in a process that no longer exists will never finish: say so."""
        with self._lock:
            rows = self._conn.execute("SELECT id, pid FROM jobs WHERE status = 'running'").fetchall()
            for r in rows:
                if not _alive(r["pid"]):
                    self._conn.execute(
                        "UPDATE jobs SET status = 'failed', finished_at = ?, error = ? WHERE id = ? AND status = 'running'",
                        (time.time(), "interrupted: the server process running it stopped; queue it again "
                                      "(crawls and ingests resume where they stopped)", r["id"]))

    def _claim(self) -> dict | None:
        """The oldest queued job, marked running by this process; None when one is already running."""
        self._reap()
        with self._lock:
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                if c.execute("SELECT 1 FROM jobs WHERE status = 'running' LIMIT 1").fetchone():
                    c.execute("COMMIT")
                    return None
                r = c.execute("SELECT * FROM jobs WHERE status = 'queued' ORDER BY id LIMIT 1").fetchone()
                if r is None:
                    c.execute("COMMIT")
                    return None
                now = time.time()
                c.execute("UPDATE jobs SET status = 'running', pid = ?, started_at = ? WHERE id = ?",
                          (os.getpid(), now, r["id"]))
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
        job = _row(r)
        job.update(status="running", started_at=now)
        return job

    def _finish(self, job_id: int, status: str, result: dict | None = None, error: str | None = None) -> None:
        with self._lock:
            self._conn.execute("UPDATE jobs SET status = ?, finished_at = ?, result = ?, error = ? WHERE id = ?",
                               (status, time.time(), json.dumps(result) if result is not None else None, error,
                                job_id))

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
        with self._lock:
            waiting = self._conn.execute("SELECT 1 FROM jobs WHERE status = 'queued' LIMIT 1").fetchone()
        if waiting:
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
