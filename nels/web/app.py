"""The NELS website: a JSON API (OpenAPI docs at /docs) and the static search site.

Every search goes through `Library.search` (one code path with the CLI). The Library is opened once
per app; its single SQLite connection is shared by the request threads under `AppState.lock`.
Admin endpoints need the token in $NELS_ADMIN_TOKEN (header `Authorization: Bearer <token>` or
`X-Admin-Token`); without that variable, admin is disabled (403).
"""
from __future__ import annotations

import asyncio
import gc
import hashlib
import hmac
import json
import logging
import mimetypes
import os
import threading
from collections import OrderedDict
import time
from pathlib import Path
from typing import Literal

from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from nels import config
from nels.errors import (DecodeError, LibraryError, ModelError, ModelMismatchError, NelsError, QueryError,
                         SourceError)
from nels.library import Library
from nels.encoders.text import shared_text_encoder
from nels.web.jobs import JobRunner
from nels.web.textbatch import TextBatcher

log = logging.getLogger("nels.web")
STATIC = Path(__file__).resolve().parent / "static"
MAX_UPLOAD_BYTES = config.max_upload_bytes()
MAX_QUERY_SECONDS = config.MAX_QUERY_AUDIO_SECONDS
Mode = Literal["linguistic", "acoustic", "joint", "fused"]
STATUS = {QueryError: 400, SourceError: 400, ModelError: 422, DecodeError: 422, ModelMismatchError: 409,
          LibraryError: 404}
MEDIA_TYPES = {".flac": "audio/flac", ".wav": "audio/wav", ".mp3": "audio/mpeg", ".ogg": "audio/ogg",
               ".opus": "audio/ogg", ".oga": "audio/ogg", ".m4a": "audio/mp4", ".aac": "audio/aac",
               ".webm": "audio/webm", ".mp4": "video/mp4", ".mkv": "video/x-matroska"}
SITE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:;"
                " style-src 'self'; script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none';"
                " frame-ancestors 'none'"}


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _json_default(o):
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def _json_bytes(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=_json_default).encode("utf-8")


def _err(status: int, message: str, **extra) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


# -- security headers on every answer ------------------------------------------------------------------
class SecurityHeaders:
    """Pure ASGI middleware (Starlette's @app.middleware("http") wraps every response in a stream and cost
    a third of a cached search's server time)."""

    EXTRA = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin")]

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(msg):
            if msg["type"] == "http.response.start":
                have = {k.lower() for k, _ in msg.get("headers", [])}
                msg["headers"] = list(msg.get("headers", [])) + [h for h in self.EXTRA if h[0] not in have]
            await send(msg)

        await self.app(scope, receive, with_headers)


# -- request size cap (before the multipart parser spools anything) ---------------------------------
class BodyLimit:
    """Pure ASGI middleware: POST bodies over `limit` bytes get 413 JSON, whether or not Content-Length is sent."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        try:
            declared = int(headers.get(b"content-length", b"-1"))
        except ValueError:
            declared = -1
        if declared > self.limit:
            return await self._too_large(send)
        seen, over, started = 0, False, False

        async def limited_receive():
            nonlocal seen, over
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    over = True
                    raise ApiError(413, "too large")
            return msg

        async def guarded_send(msg):
            nonlocal started
            if over:
                return  # the app's own (error) answer is replaced by the 413 below
            started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except ApiError:
            if not over:
                raise
        if over and not started:
            await self._too_large(send)

    async def _too_large(self, send):
        body = json.dumps({"error": f"upload too large: the limit is {self.limit // (1024 * 1024)} MB"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


# -- state ---------------------------------------------------------------------------------------------
class LRU:
    """A small thread-safe LRU map (text-search answers)."""

    def __init__(self, size: int = 512):
        self.size, self.data, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, key):
        with self.lock:
            v = self.data.get(key)
            if v is not None:
                self.data.move_to_end(key)
            return v

    def put(self, key, value) -> None:
        with self.lock:
            self.data[key] = value
            self.data.move_to_end(key)
            while len(self.data) > self.size:
                self.data.popitem(last=False)


SEARCH_THREADS = config.SEARCH_THREADS


class AppState:
    def __init__(self, library_path, admin_token: str | None):
        from concurrent.futures import ThreadPoolExecutor

        self.lib = Library(library_path, create=False)
        self.results = LRU()
        # searches run here, not in the 40-thread request pool: two at a time per process, the rest wait
        # in order, and the event loop stays free to answer cached queries and serve media meanwhile
        self.search_pool = ThreadPoolExecutor(SEARCH_THREADS, thread_name_prefix="nels-search")
        self.inflight: dict = {}  # answer-cache key -> asyncio.Future: identical concurrent misses run once
        self.text_batcher = TextBatcher(shared_text_encoder())  # concurrent misses share MiniLM batches
        self.lock = threading.RLock()
        self.jobs = JobRunner(self.lib.path)
        self._token = admin_token
        self._text_ok: tuple | None = None  # (catalogue stamp, can this library answer text at all)

    @property
    def admin_token(self) -> str | None:
        return self._token if self._token is not None else config.admin_token()

    def modes(self) -> dict:
        from nels.encoders.joint import library_has_joint

        with self.lock:
            c = self.lib.conn
            has_probs = c.execute("SELECT 1 FROM probs LIMIT 1").fetchone() is not None
            has_vecs = c.execute("SELECT 1 FROM vectors LIMIT 1").fetchone() is not None
            has_joint = bool(library_has_joint(self.lib))
        available = [m for m, ok in (("linguistic", has_probs), ("acoustic", has_vecs), ("joint", has_joint)) if ok]
        if available:
            available.append("fused")
        return {"available": available, "text": has_probs or has_joint, "audio": has_vecs or has_joint,
                "default_text": self._default_text(has_joint, has_probs),
                "default_audio": "fused" if has_joint else ("acoustic" if has_vecs else None)}

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

                t = np.arange(16000, dtype=np.float32) / 16000
                self.lib.search(audio=(0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), k=1)
        except NelsError as exc:  # a library that cannot be searched still serves its pages
            log.warning("warm-up search failed: %s", exc)

    def _default_text(self, has_joint: bool, has_probs: bool) -> str | None:
        """The mode `Library.search` picks for a text query (validation's choice, see joint_train)."""
        from nels.encoders.joint import library_joint

        if has_joint:
            enc = library_joint(self.lib)
            fusion = ((enc.meta.get("fusion") or {}).get("text") or {}) if enc is not None else {}
            if fusion.get("default_mode"):
                return fusion["default_mode"]
        return "linguistic" if has_probs else ("joint" if has_joint else None)


class Feedback(BaseModel):
    query: str = Field(..., min_length=1, max_length=1000)
    mode: str | None = Field(None, max_length=32)
    clip_id: int
    segment_id: int | None = None
    relevant: bool
    label: str | None = Field(None, max_length=200)


class CrawlRequest(BaseModel):
    queries: list[str] = Field(..., min_length=1, max_length=50)
    per_query: int = Field(10, ge=1, le=100)
    max_duration: float | None = Field(600.0, gt=0)


class IngestRequest(BaseModel):
    urls: list[str] = Field(..., min_length=1, max_length=500)
    max_duration: float | None = Field(None, gt=0)


def _events(segments: list[dict]) -> list[dict]:
    """A timeline: consecutive segments whose top label agrees merge into one event."""
    out: list[dict] = []
    for s in segments:
        if not s["labels"]:
            continue
        top = s["labels"][0]
        last = out[-1] if out else None
        if last and last["label"] == top["label"] and s["start"] <= last["end"] + 1e-6:
            last["end"] = max(last["end"], s["end"])
            last["prob"] = max(last["prob"], top["prob"])
            last["segments"].append(s["segment_id"])
        else:
            out.append({"label": top["label"], "start": s["start"], "end": s["end"], "prob": top["prob"],
                        "segments": [s["segment_id"]]})
    return out


def create_app(library_path, admin_token: str | None = None, max_upload_bytes: int = MAX_UPLOAD_BYTES,
               warm: bool = False) -> FastAPI:
    """The app over the library at `library_path` (LibraryError when there is none).

    admin_token : overrides $NELS_ADMIN_TOKEN (read per request when not given).
    warm : load the models and indexes at startup, before serving (what `nels serve` does).
    """
    from contextlib import asynccontextmanager

    st = AppState(library_path, admin_token)
    lib = st.lib

    @asynccontextmanager
    async def lifespan(app):
        if warm:
            st.warm()
            # everything loaded so far (models, vocabularies, indexes) lives as long as the process: keep
            # it out of the garbage collector's full passes, which otherwise walked those objects and
            # paused a busy server for tens of milliseconds at a time
            gc.collect()
            gc.freeze()
        st.jobs.resume()  # jobs queued before a restart run now, not at the next submission
        yield
        st.search_pool.shutdown(wait=False, cancel_futures=True)
        st.text_batcher.close()
        st.jobs.stop()

    app = FastAPI(title="NELS", version="0.1.0", lifespan=lifespan,
                  description="Never-Ending Learner of Sounds: search a sound collection by text and by sound.")
    app.state.nels = st

    # -- errors: always JSON, never a stack trace ------------------------------------------------------
    @app.exception_handler(NelsError)
    async def _nels_error(request: Request, exc: NelsError):
        status = next((s for cls, s in STATUS.items() if isinstance(exc, cls)), 400)
        return _err(status, str(exc))

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return _err(exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        msg = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404 and msg == "Not Found":
            msg = f"not found: {request.url.path}"
        return _err(exc.status_code, msg)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        parts = []
        for e in exc.errors():
            loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path"))
            parts.append(f"{loc}: {e.get('msg', 'invalid')}" if loc else str(e.get("msg", "invalid")))
        return _err(422, "invalid request: " + "; ".join(parts))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return _err(500, "internal error (see the server log)")

    # -- admin guard ----------------------------------------------------------------------------------
    def require_admin(request: Request) -> None:
        token = st.admin_token
        if not token:
            raise ApiError(403, "admin is disabled on this server (start it with NELS_ADMIN_TOKEN set)")
        auth = request.headers.get("authorization", "")
        given = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-admin-token", "")
        if not given:
            raise ApiError(401, "admin token required (Authorization: Bearer <token>)")
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise ApiError(403, "wrong admin token")

    # -- search ---------------------------------------------------------------------------------------
    def _answer(res, query: str, k: int, page: int) -> dict:
        out = res.to_dict()
        out.update(query=query, k=k, page=page, has_more=len(res) >= k)
        return out

    @app.get("/api/search", tags=["search"], summary="Search by text")
    async def search_text(q: str = Query(..., max_length=1000, description="what to look for, e.g. 'dog barking'"),
                          mode: Mode | None = None, k: int = Query(10, ge=1, le=200),
                          page: int = Query(1, ge=1, le=1000), label: str | None = None, source: str | None = None,
                          min_duration: float | None = None, max_duration: float | None = None):
        # Answers are cached, serialised, per library state: a popular query or paging back costs a dict
        # lookup on the event loop (no thread hop, no JSON encoding). A miss runs in the thread pool, with
        # no global lock: Library gives each thread its own SQLite connection, and FAISS indexes are only
        # ever swapped, never mutated in place.
        key = (" ".join(q.split()).lower(), mode, k, page, label, source, min_duration, max_duration)
        # any commit by anyone else (an ingest, a removal, a re-index, another server process) changes the
        # catalogue's data_version as seen from this thread's connection, and retires every cached answer
        stamp = lib.data_version()
        hit = st.results.get(key)
        if hit is not None and hit[0] == stamp:
            return Response(hit[1], media_type="application/json")
        pending = st.inflight.get((key, stamp))
        if pending is not None:  # the same search is running for another client: share its answer
            return Response(await asyncio.shield(pending), media_type="application/json")

        def run() -> bytes:
            res = lib.search(text=q, mode=mode, k=k, page=page, label=label, source=source,
                             min_duration=min_duration, max_duration=max_duration)
            return _json_bytes(_answer(res, q, k, page))

        async def prepare_then_run() -> bytes:
            if st.text_ok(stamp):
                await st.text_batcher.prepare(" ".join(q.split()))
            return await asyncio.get_running_loop().run_in_executor(st.search_pool, run)

        fut = asyncio.ensure_future(prepare_then_run())
        st.inflight[(key, stamp)] = fut
        try:
            body = await asyncio.shield(fut)
        finally:
            st.inflight.pop((key, stamp), None)
        st.results.put(key, (stamp, body))
        return Response(body, media_type="application/json")

    @app.post("/api/search", tags=["search"], summary="Search by an uploaded sound (optionally with text)")
    async def search_audio(audio: UploadFile = File(..., description="an audio file (wav, flac, mp3, ogg, webm...)"),
                           q: str | None = Form(None, max_length=1000), mode: Mode | None = Form(None),
                           k: int = Form(10, ge=1, le=200), page: int = Form(1, ge=1, le=1000),
                           start: float | None = Form(None, ge=0), end: float | None = Form(None, gt=0),
                           label: str | None = Form(None), source: str | None = Form(None)):
        data = await audio.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise ApiError(413, f"upload too large: the limit is {max_upload_bytes // (1024 * 1024)} MB")
        if not data:
            raise ApiError(422, "the uploaded file is empty")
        def run():
            from nels.audio.decode import decode

            limit = min(MAX_QUERY_SECONDS, (end + 1.0) if end else MAX_QUERY_SECONDS)
            try:
                x = decode(data, max_seconds=limit)
            except DecodeError as exc:
                raise DecodeError(f"{audio.filename or 'upload'}: not an audio file we can read"
                                  f" ({str(exc).split(': ', 1)[-1]})") from None
            return lib.search(text=q, audio=x, mode=mode, k=k, page=page, start=start, end=end,
                              label=label, source=source)

        res = await asyncio.get_running_loop().run_in_executor(st.search_pool, run)
        return _answer(res, q or f"audio: {audio.filename or 'upload'}", k, page)

    @app.get("/api/modes", tags=["search"], summary="Which search modes this library supports")
    def modes():
        return st.modes()

    # -- clips & media ----------------------------------------------------------------------------------
    def _media_file(clip_id: int) -> tuple[Path, dict]:
        with st.lock:
            row = lib.conn.execute("SELECT media_path, duration FROM clips WHERE id=?", (clip_id,)).fetchone()
        if row is None:
            raise ApiError(404, f"no clip {clip_id}")
        root = (lib.path / "media").resolve()
        path = (lib.path / row["media_path"]).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise ApiError(404, f"the media of clip {clip_id} is missing")
        return path, dict(row)

    @app.get("/api/clips/{clip_id}", tags=["clips"], summary="A clip, its segments and its timeline of sound events")
    def clip(clip_id: int):
        with st.lock:
            c = lib.clip(clip_id)
        if c is None:
            raise ApiError(404, f"no clip {clip_id}")
        c.pop("content_hash", None)
        c.pop("media_path", None)
        if c.get("meta"):
            try:
                c["meta"] = json.loads(c["meta"])
            except ValueError:
                pass
        c["media_url"] = f"/media/{clip_id}"
        c["spectrogram_url"] = f"/api/spectrogram/{clip_id}.png"
        c["source"] = c.get("webpage_url") or c.get("source_uri")
        c["events"] = _events(c["segments"])
        return c

    @app.get("/media/{clip_id}", tags=["clips"], summary="The clip's audio (HTTP Range supported)")
    def media(clip_id: int):
        path, _ = _media_file(clip_id)
        mt = MEDIA_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=mt, headers={"Cache-Control": "public, max-age=86400",
                                                          "Accept-Ranges": "bytes"})

    @app.get("/api/spectrogram/{clip_id}.png", tags=["clips"], summary="A spectrogram thumbnail (segment outlined)")
    def spectrogram(clip_id: int, start: float | None = Query(None, ge=0), end: float | None = Query(None, gt=0)):
        from nels.web.images import spectrogram_png

        path, row = _media_file(clip_id)
        span = (round(start, 2), round(end, 2)) if start is not None and end is not None else None
        key = hashlib.sha1(f"{path.name}|{span}".encode()).hexdigest()[:16]
        cache = lib.path / "cache" / "spectrograms" / f"{clip_id}-{key}.png"
        if not cache.exists():
            png = spectrogram_png(path, row["duration"], *(span or (None, None)))
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{threading.get_ident()}.tmp")
            tmp.write_bytes(png)
            os.replace(tmp, cache)
        return FileResponse(cache, media_type="image/png", headers={"Cache-Control": "public, max-age=86400"})

    # -- feedback & stats -------------------------------------------------------------------------------
    @app.post("/api/feedback", tags=["feedback"], summary="Mark a result relevant or not (stored in the library)")
    def feedback(fb: Feedback):
        with st.lock:
            if lib.conn.execute("SELECT 1 FROM clips WHERE id=?", (fb.clip_id,)).fetchone() is None:
                raise ApiError(404, f"no clip {fb.clip_id}")
            if fb.segment_id is not None and lib.conn.execute(
                    "SELECT 1 FROM segments WHERE id=? AND clip_id=?", (fb.segment_id, fb.clip_id)).fetchone() is None:
                raise ApiError(404, f"clip {fb.clip_id} has no segment {fb.segment_id}")
            cur = lib.conn.execute(
                "INSERT INTO feedback(query, mode, clip_id, segment_id, relevant, label, created_at)"
                " VALUES(?,?,?,?,?,?,?)",
                (" ".join(fb.query.split()), fb.mode, fb.clip_id, fb.segment_id, int(fb.relevant), fb.label, time.time()))
        return {"ok": True, "id": cur.lastrowid}

    @app.get("/api/feedback", tags=["feedback"], summary="The latest judgement per clip for a query")
    def feedback_list(query: str = Query(..., max_length=1000)):
        with st.lock:
            rows = lib.conn.execute(
                "SELECT clip_id, segment_id, relevant, mode, created_at FROM feedback f WHERE query=? AND id ="
                " (SELECT MAX(id) FROM feedback g WHERE g.query=f.query AND g.clip_id=f.clip_id)"
                " ORDER BY clip_id", (" ".join(query.split()),)).fetchall()
        return {"query": query, "feedback": [dict(r, relevant=bool(r["relevant"])) for r in rows]}

    @app.get("/api/stats", tags=["library"], summary="Library statistics and available search modes")
    def stats():
        with st.lock:
            s = lib.stats()
        s["modes"] = st.modes()
        s["admin_enabled"] = bool(st.admin_token)
        return s

    # -- admin ----------------------------------------------------------------------------------------------
    admin = [Depends(require_admin)]

    def _job(job: dict) -> dict:
        """A job with its progress: crawl items touched since it started, and time elapsed."""
        progress = None
        if job.get("started_at"):
            rows = lib.conn.execute("SELECT status, COUNT(*) FROM items WHERE updated_at >= ? GROUP BY status",
                                    (job["started_at"],)).fetchall()
            progress = {"items": {r[0]: r[1] for r in rows},
                        "elapsed_s": round((job.get("finished_at") or time.time()) - job["started_at"], 1)}
        return {**job, "progress": progress}

    @app.post("/api/admin/crawl", tags=["admin"], dependencies=admin, status_code=202,
              summary="Queue a crawl (YouTube search through yt-dlp)")
    def admin_crawl(req: CrawlRequest):
        queries = [" ".join(q.split()) for q in req.queries if q.strip()]
        if not queries:
            raise ApiError(400, "give at least one non-empty query")
        job = st.jobs.submit("crawl", {"queries": queries, "per_query": req.per_query,
                                       "max_duration": req.max_duration})
        return _job(job)

    @app.post("/api/admin/ingest", tags=["admin"], dependencies=admin, status_code=202,
              summary="Queue an ingest of public http(s) URLs (private/loopback addresses are refused)")
    def admin_ingest(req: IngestRequest):
        from nels.sources.guard import check_public_url

        urls = [u.strip() for u in req.urls if u.strip()]
        if not urls:
            raise ApiError(400, "give at least one URL")
        for u in urls:
            check_public_url(u)  # SourceError -> 400, before anything is queued
        job = st.jobs.submit("ingest", {"urls": urls, "max_duration": req.max_duration})
        return _job(job)

    @app.get("/api/admin/jobs", tags=["admin"], dependencies=admin, summary="Background jobs, newest first")
    def admin_jobs():
        return {"jobs": [_job(j) for j in st.jobs.list()]}

    @app.get("/api/admin/jobs/{job_id}", tags=["admin"], dependencies=admin, summary="One background job")
    def admin_job(job_id: int):
        j = st.jobs.get(job_id)
        if j is None:
            raise ApiError(404, f"no job {job_id}")
        return _job(j)

    @app.get("/api/admin/models", tags=["admin"], dependencies=admin, summary="Models known to the library")
    def admin_models():
        from nels.encoders.base import DEFAULT_MODEL_DIR

        with st.lock:
            rows = [dict(r) for r in lib.conn.execute(
                "SELECT id, name, kind, path, labels, created_at, meta FROM models ORDER BY id")]
            current = {"model": lib.get_meta("model"), "model_name": lib.get_meta("model_name")}
        for r in rows:
            labels = json.loads(r.pop("labels") or "null") or []
            r["n_labels"], r["labels"] = len(labels), labels[:200]
            r["meta"] = json.loads(r["meta"]) if r.get("meta") else None
        return {"library": current, "models": rows,
                "default_model": {"path": str(DEFAULT_MODEL_DIR), "present": (DEFAULT_MODEL_DIR / "model.json").exists()}}

    def _iteration_rows() -> list[dict]:
        with st.lock:
            return [dict(r) for r in lib.conn.execute(
                "SELECT id, run, iteration, strategy, model, map, per_class, selected, created_at FROM iterations"
                " ORDER BY run, strategy, iteration")]

    @app.get("/api/admin/iterations", tags=["admin"], dependencies=admin, summary="Learning-loop iterations")
    def admin_iterations():
        rows = _iteration_rows()
        for r in rows:
            for key in ("per_class", "selected"):
                try:
                    r[key] = json.loads(r[key]) if r[key] else None
                except ValueError:
                    pass
        return {"iterations": rows, "chart": "/api/admin/iterations.png" if rows else None}

    @app.get("/api/admin/iterations.png", tags=["admin"], dependencies=admin, summary="AP per class per iteration")
    def admin_iterations_png():
        from nels.web.images import iterations_png

        rows = _iteration_rows()
        if not rows:
            raise ApiError(404, "no learning iterations recorded yet (run 'nels learn')")
        return Response(iterations_png(rows), media_type="image/png", headers={"Cache-Control": "no-store"})

    # -- the site -------------------------------------------------------------------------------------------
    def _page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html",
                            headers={**SITE_HEADERS, "Cache-Control": "no-cache"})

    @app.get("/", include_in_schema=False)
    def home():
        return _page()

    @app.get("/clip/{clip_id}", include_in_schema=False)
    def clip_page(clip_id: int):
        return _page()

    @app.get("/admin", include_in_schema=False)
    def admin_page():
        return _page()

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    app.add_middleware(BodyLimit, limit=max_upload_bytes + 256 * 1024)  # room for the multipart envelope
    app.add_middleware(SecurityHeaders)
    return app


def app_from_env() -> FastAPI:
    """The app factory each `nels serve --workers N` process calls (the library path comes in
    $NELS_SERVE_LIBRARY, set by `cli_serve`)."""
    return create_app(config.SERVE_LIBRARY.get(), warm=True)


def default_workers() -> int:
    """One server process per core (at most 4): a search holds the GIL while it runs, so one process
    serves one search at a time however many threads it has."""
    return max(1, min(4, os.cpu_count() or 1))


def cli_serve(args) -> int:
    import uvicorn

    app = create_app(args.library, warm=True)  # opens (and migrates) the library now: a bad path fails here
    path = app.state.nels.lib.path
    host = args.host
    workers = getattr(args, "workers", None) or default_workers()
    if host not in ("127.0.0.1", "localhost", "::1") and not config.admin_token():
        print("nels: note: serving beyond loopback; admin endpoints are disabled (no NELS_ADMIN_TOKEN)")
    print(f"nels: serving {path} at http://{host}:{args.port}/ (API docs at /docs; {workers} worker"
          f"{'s' if workers > 1 else ''})", flush=True)
    if workers == 1:
        uvicorn.run(app, host=host, port=args.port, log_level="warning", access_log=False)
    else:
        app.state.nels.lib.close()
        os.environ[config.SERVE_LIBRARY.env] = str(path)
        uvicorn.run("nels.web.app:app_from_env", factory=True, workers=workers, host=host, port=args.port,
                    log_level="warning", access_log=False)
    return 0
