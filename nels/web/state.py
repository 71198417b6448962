"""What one app (one server process) holds for the library it serves: the Library, the answer cache, the
search thread pool, the text batcher and the admin job runner. Routes reach it through `app_state`."""
from __future__ import annotations

import gc
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from fastapi import Request

from nels import config
from nels.encoders.text import shared_text_encoder
from nels.errors import NelsError
from nels.library import Library
from nels.search.modes import library_modes
from nels.web.jobs import JobRunner
from nels.web.textbatch import TextBatcher

log = logging.getLogger("nels.web")
SEARCH_THREADS = config.SEARCH_THREADS
MAX_ID = 2 ** 63 - 1  # SQLite's largest integer: a larger id is a 422, not an OverflowError


class ClientRateLimit:
    """A token bucket per client (address): `per_minute` on average, bursts of `burst`. At most `max_clients`
    buckets are kept (the least recently seen are forgotten), so a flood of addresses cannot grow memory."""

    def __init__(self, per_minute: float, burst: int, max_clients: int = 10_000):
        self.rate, self.burst, self.max_clients = per_minute / 60.0, float(burst), max_clients
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.lock = threading.Lock()

    def take(self, client: str, now: float | None = None) -> float:
        """0.0 when `client` may go ahead (a token is spent), else the seconds until it may."""
        now = time.monotonic() if now is None else now
        with self.lock:
            tokens, last = self.buckets.pop(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate
            self.buckets[client] = (tokens - 1.0 if wait == 0.0 else tokens, now)
            while len(self.buckets) > self.max_clients:
                self.buckets.popitem(last=False)
            return wait


class LRU:
    """A small thread-safe LRU map of answers per library state (text-search answers): an answer put with one
    catalogue stamp (`Catalogue.data_version`) is only got back with the same stamp. `hits` and `misses` count."""

    def __init__(self, size: int = 512):
        self.size, self.data, self.lock = size, OrderedDict(), threading.Lock()
        self.hits = self.misses = 0

    def get(self, key, stamp):
        """The value put for `key` with `stamp`, else None (a miss)."""
        with self.lock:
            v = self.data.get(key)
            if v is not None and v[0] == stamp:
                self.data.move_to_end(key)
                self.hits += 1
                return v[1]
            self.misses += 1
            return None

    def put(self, key, stamp, value) -> None:
        with self.lock:
            self.data[key] = (stamp, value)
            self.data.move_to_end(key)
            while len(self.data) > self.size:
                self.data.popitem(last=False)


class AppState:
    """The library served and what the routes share. The Library's catalogue gives each thread its own
    SQLite connection, so request threads read it without a lock.

    admin_token : overrides $NELS_ADMIN_TOKEN (read per request when None).
    max_upload_bytes : the largest uploaded query file.
    """

    def __init__(self, library_path, admin_token: str | None = None, max_upload_bytes: int | None = None):
        self.lib = Library(library_path, create=False)
        self.max_upload_bytes = config.max_upload_bytes() if max_upload_bytes is None else max_upload_bytes
        self.results = LRU()
        self._open_pools()
        self.inflight: dict = {}  # answer-cache key -> asyncio.Future: identical concurrent misses run once
        self.jobs = JobRunner(self.lib.path)
        self.feedback_limit = ClientRateLimit(config.FEEDBACK_PER_MINUTE, config.FEEDBACK_BURST)
        self.stats_cache: tuple | None = None  # (catalogue stamp, time, Library.stats()) for /api/stats
        self._token = admin_token
        self._text_ok: tuple | None = None  # (catalogue stamp, can this library answer text at all)

    @property
    def admin_token(self) -> str | None:
        return self._token if self._token is not None else config.admin_token()

    def modes(self) -> dict:
        """The modes the library supports and the defaults (see `nels.search.modes.library_modes`)."""
        return library_modes(self.lib)

    def text_ok(self, stamp) -> bool:
        """Whether a text query can be answered here (class probabilities or joint vectors), checked once
        per catalogue state: the text batcher does not spend MiniLM on a query that only gets an error."""
        if self._text_ok is None or self._text_ok[0] != stamp:
            self._text_ok = (stamp, bool(self.modes()["text"]))
        return self._text_ok[1]

    def warm(self) -> None:
        """Load every model and index a search needs (text model, label phrases, CNN, joint space, FAISS,
        the probability matrix) before the first request, not during it: a cold process under load
        otherwise made its first dozens of requests wait seconds."""
        try:
            if self.lib.newest_ids()["segments"] == 0:
                return
            modes = self.modes()
            if modes["text"]:
                self.lib.search(text="warm up", k=1)
            if modes["audio"]:
                import numpy as np

                t = np.arange(config.SAMPLE_RATE, dtype=np.float32) / config.SAMPLE_RATE
                self.lib.search(audio=(0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), k=1)
        except NelsError as exc:  # a library that cannot be searched still serves its pages
            log.warning("warm-up search failed: %s", exc)
        # what the warm-up loaded (modules, models, vocabularies: ~200k objects) stays for the process's life:
        # out of the garbage collector's scans, whose full passes over it cost ~0.1 s of one search in 30
        # (bench/RESULTS.md, search latency at 100k segments)
        gc.collect()
        gc.freeze()

    def _open_pools(self) -> None:
        """The threads the served app works in; opened again when an app that was stopped is served again
        (one app under one test client after another, an embedding server's restart)."""
        # weakly covered text queries are counted here, one thread, in the order asked (a cached answer is
        # counted too); close() writes what is queued before the server stops
        self.log_pool = ThreadPoolExecutor(1, thread_name_prefix="nels-log")
        # searches run here, not in the 40-thread request pool: two at a time per process, the rest wait
        # in order, and the event loop stays free to answer cached queries and serve media meanwhile
        self.search_pool = ThreadPoolExecutor(SEARCH_THREADS, thread_name_prefix="nels-search")
        self.text_batcher = TextBatcher(shared_text_encoder())  # concurrent misses share MiniLM batches
        self._closed = False

    def start(self) -> None:
        """At server start: the worker threads (again, after a stop), and jobs queued before a restart run now,
        not at the next submission."""
        if self._closed:
            self._open_pools()
        self.jobs.resume()

    def log_weak(self, text: str, coverage: dict | None) -> None:
        """Count one asking of a text query in the library's weak-query log when `coverage` (a text answer's)
        says no class covers it, without waiting for the write. The log is not the catalogue (see
        `Catalogue._log`): counting changes no answer cache's stamp."""
        if coverage is None or coverage.get("kind") != "text" or coverage.get("covered", True):
            return
        closest = coverage["closest"][0]["label"] if coverage.get("closest") else None
        try:
            self.log_pool.submit(self._log_weak, text, float(coverage["score"]), closest)
        except RuntimeError:  # the server is stopping (its log thread is done): written here, not lost
            self._log_weak(text, float(coverage["score"]), closest)

    def _log_weak(self, text: str, score: float, closest: str | None) -> None:
        try:
            self.lib.catalogue.log_weak_query(text, score, closest)
        except Exception as exc:  # a library that cannot be written to still answers
            log.warning("weak query not logged: %s", exc)

    def close(self) -> None:
        self._closed = True
        self.log_pool.shutdown(wait=True)  # every query asked is counted (a clean stop loses none)
        self.search_pool.shutdown(wait=False, cancel_futures=True)
        self.text_batcher.close()
        self.jobs.stop()


async def app_state(request: Request) -> AppState:
    """The route dependency: this app's state (async, so that it runs on the event loop, no thread hop)."""
    return request.app.state.nels
