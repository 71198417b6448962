"""A clip and its timeline, its audio (HTTP Range), its spectrogram, relevance feedback and /api/stats."""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field

from nels import config
from nels.web.auth import is_admin, public_source
from nels.web.errors import ApiError
from nels.web.state import MAX_ID, AppState, app_state

# /media serves only these types (media, never a document a browser would run); any other file goes out as
# application/octet-stream with Content-Disposition: attachment
MEDIA_TYPES = {".flac": "audio/flac", ".wav": "audio/wav", ".mp3": "audio/mpeg", ".ogg": "audio/ogg",
               ".opus": "audio/ogg", ".oga": "audio/ogg", ".m4a": "audio/mp4", ".aac": "audio/aac",
               ".webm": "audio/webm", ".mka": "audio/x-matroska", ".aiff": "audio/aiff", ".aif": "audio/aiff",
               ".mp4": "video/mp4", ".mkv": "video/x-matroska"}
# a media answer is never a page: no script, no plug-in, no same-origin access even if a browser renders it
MEDIA_HEADERS = {"Content-Security-Policy": "sandbox; default-src 'none'", "X-Content-Type-Options": "nosniff",
                 "Cache-Control": "public, max-age=86400", "Accept-Ranges": "bytes"}

router = APIRouter()
STATS_TTL = 5.0  # seconds an /api/stats answer is reused (it is also renewed by any commit to the library)
ClipId = Annotated[int, PathParam(ge=0, le=MAX_ID, description="a clip id")]


class Feedback(BaseModel):
    query: str = Field(..., min_length=1, max_length=1000)
    mode: str | None = Field(None, max_length=32)
    clip_id: int = Field(..., ge=0, le=MAX_ID)
    segment_id: int | None = Field(None, ge=0, le=MAX_ID)
    relevant: bool
    label: str | None = Field(None, max_length=200)


def events(segments: list[dict]) -> list[dict]:
    """A timeline: runs of consecutive segments with the same top label, a run shorter than RUN_MIN_SECONDS
    absorbed by its neighbour (nels.search.tag.label_runs): tens of events for an hour, not thousands. A
    segment's top label is its most probable *specific* one (nels.search.labels: "sheep", not YAMNet's
    "Livestock, farm animals, working animals" above it)."""
    from nels.search.labels import specific_labels
    from nels.search.tag import label_runs

    return label_runs([{**s, "labels": specific_labels(s["labels"])} for s in segments])


def attribution(c: dict) -> str:
    """'"Title" by Uploader (URL), licence: CC BY 4.0' from what the library knows of a clip's source."""
    title = c.get("title") or f"clip {c.get('id')}"
    out = f'"{title}"' + (f" by {c['uploader']}" if c.get("uploader") else "")
    src = c.get("webpage_url") or c.get("source")
    if src and "://" in str(src):
        out += f" ({src})"
    return out + (f", licence: {c['licence']}" if c.get("licence") else ", licence: not recorded (ask the source)")


def _media_file(st: AppState, clip_id: int) -> tuple[Path, dict]:
    """The clip's media file and its {media_path, duration}: a file inside the library's media folder, or the
    original of a clip kept in place (`nels ingest --in-place`) as `Library.media_file` verified it (registered,
    size and time as recorded, else the same SHA-256). 404 when missing, 409 when an original changed."""
    from nels.store.library import MediaUnavailable, is_in_place

    lib = st.lib
    row = lib.catalogue.clip_media(clip_id)
    if row is None:
        raise ApiError(404, f"no clip {clip_id}")
    try:
        path = lib.media_file(row["media_path"], clip_id).resolve()  # a cached copy when on object storage
    except MediaUnavailable as exc:  # where a user's own file lives is not said here ('nels check' names it)
        if exc.reason == "changed":
            raise ApiError(409, f"the original file of clip {clip_id} changed since it was ingested") from None
        raise ApiError(404, f"the media of clip {clip_id} is missing") from None
    inside = is_in_place(row["media_path"]) or path.is_relative_to((lib.path / "media").resolve())
    if not inside or not path.is_file():
        raise ApiError(404, f"the media of clip {clip_id} is missing")
    return path, row


@router.get("/api/clips/{clip_id}", tags=["clips"], summary="A clip, its segments and its timeline of sound events")
def clip(clip_id: ClipId, request: Request, st: AppState = Depends(app_state),
         segments: bool = Query(True, description="include every segment (an hour-long clip has 3600); the events,"
                                                  " grouped by label, are always there")):
    c = _clip_with_events(st, clip_id, segments)
    if c is None:
        raise ApiError(404, f"no clip {clip_id}")
    c.pop("content_hash", None)
    c["in_place"] = c.pop("media_size", None) is not None  # kept where the user's file is (--in-place)
    c.pop("media_mtime_ns", None)
    c.pop("media_path", None)
    if c.get("meta"):
        try:
            c["meta"] = json.loads(c["meta"])
        except ValueError:
            pass
    if not is_admin(request):  # where a local file lives is the admin's business
        c["source_uri"] = public_source(c.get("source_uri"))
    c["media_url"] = f"/media/{clip_id}"
    c["spectrogram_url"] = f"/api/spectrogram/{clip_id}.png"
    c["source"] = c.get("webpage_url") or c.get("source_uri")
    c["view_url"] = f"/api/clips/{clip_id}/view.png"
    c["download_url"] = f"/api/clips/{clip_id}/download"
    c["similar_url"] = f"/api/clips/{clip_id}/similar"
    c["attribution"] = attribution(c)
    if not segments:
        c.pop("segments", None)
    # serialised here: FastAPI's generic encoder spends ~130 ms on an hour's 3600 segments
    return Response(json.dumps(c, ensure_ascii=False, separators=(",", ":")).encode("utf-8"),
                    media_type="application/json")


_CLIPS: dict = {}  # (library, clip id, with segments) -> (catalogue version, clip with its events)
_CLIPS_LOCK = threading.Lock()
_CLIPS_MAX = 32


def _clip_with_events(st: AppState, clip_id: int, segments: bool = True) -> dict | None:
    """The catalogue's clip with its events (runs), event groups and segment count, reused while the catalogue
    is unchanged (a second visit to an hour-long clip skips reading 3600 segments). segments : also every
    segment with its labels (else only what the timeline needs: each segment's top label, read in one query,
    the clip page's first request). A fresh dict: callers may change its top-level fields."""
    from nels.search.tag import group_by_label

    key, version = (str(st.lib.path), clip_id, segments), st.lib.data_version()
    with _CLIPS_LOCK:
        hit = _CLIPS.get(key)
    if hit is not None and hit[0] == version:
        return dict(hit[1])
    c = st.lib.clip(clip_id) if segments else st.lib.catalogue.clip_timeline(clip_id)
    if c is None:
        return None
    c["events"] = events(c["segments"])
    c["event_groups"] = [{k: g[k] for k in ("label", "count", "seconds")} for g in group_by_label(c["events"])]
    c["n_segments"] = len(c["segments"])
    if not segments:
        del c["segments"]
    with _CLIPS_LOCK:
        if len(_CLIPS) >= _CLIPS_MAX:
            _CLIPS.pop(next(iter(_CLIPS)))
        _CLIPS[key] = (version, c)
    return dict(c)


def _span(start: float | None, end: float | None, duration: float, clip_id: int) -> tuple[float, float]:
    """[start, end] of a clip checked (422 past its end) and clamped to it; None: the whole clip."""
    start = 0.0 if start is None else start
    end = duration if end is None else min(end, duration)
    if start >= duration:
        raise ApiError(422, f"start {start:g} s is past the end of clip {clip_id} ({duration:.2f} s)")
    if end <= start:
        raise ApiError(422, f"end {end:g} s is not after start {start:g} s")
    return start, end


_RENDERS = threading.BoundedSemaphore(2)  # views drawn at once per server process (each decodes its range)


@router.get("/api/clips/{clip_id}/view.png", tags=["clips"],
            summary="Waveform over spectrogram of any range of a clip (the clip page's overview and zoomed view)")
def view(clip_id: ClipId,
         start: float | None = Query(None, ge=0, allow_inf_nan=False, description="from (s); default 0"),
         end: float | None = Query(None, gt=0, allow_inf_nan=False, description="to (s); default: the clip's end"),
         width: int = Query(1200, ge=100, le=2400, description="pixels (rounded up to a multiple of 100)"),
         height: int = Query(160, ge=40, le=480, description="pixels (rounded up to a multiple of 40)"),
         st: AppState = Depends(app_state)):
    from nels.web.images import view_png

    path, row = _media_file(st, clip_id)
    start, end = _span(start, end, float(row["duration"] or 0.0), clip_id)
    # one picture per (10 ms-rounded range, size class): what a page asks for again is a file read, and the
    # folder is the bounded spectrogram cache (least recently used go first)
    s_ms, e_ms = int(start * 100), int(-(-end * 100 // 1))
    width, height = -(-width // 100) * 100, -(-height // 40) * 40
    key = hashlib.sha1(path.name.encode()).hexdigest()[:16]
    name = f"{clip_id}-{key}-view-{s_ms}-{e_ms}-{width}x{height}.png"
    cache = SpectrogramCache(st.lib.path / "cache" / "spectrograms")
    hit = cache.get(name)
    if hit is None:
        with _RENDERS:
            hit = cache.get(name) or cache.put(name, view_png(path, s_ms / 100, e_ms / 100, width, height))
    return FileResponse(hit, media_type="image/png", headers={"Cache-Control": "public, max-age=86400"})


def _download_name(c: dict, clip_id: int, suffix: str) -> str:
    import re

    stem = re.sub(r"[^A-Za-z0-9._ -]+", "", str(c.get("title") or ""))[:80].strip(" .") or f"clip-{clip_id}"
    if stem.lower().endswith(suffix):
        stem = stem[:-len(suffix)] or f"clip-{clip_id}"
    return f"{stem}{suffix}"


@router.get("/api/clips/{clip_id}/download", tags=["clips"],
            summary="The clip's audio as a file to save (its licence and attribution are in the clip's JSON)")
def download(clip_id: ClipId, st: AppState = Depends(app_state)):
    path, _ = _media_file(st, clip_id)
    c = st.lib.clip(clip_id) or {}
    headers = dict(MEDIA_HEADERS)
    headers["Content-Disposition"] = f'attachment; filename="{_download_name(c, clip_id, path.suffix.lower())}"'
    if c.get("licence"):
        headers["X-Licence"] = "".join(ch for ch in str(c["licence"]) if 32 <= ord(ch) < 127)[:200]
    return FileResponse(path, media_type=MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream"),
                        headers=headers)


@router.get("/api/clips/{clip_id}/similar", tags=["clips"],
            summary="Similar sounds: an audio search with a range of this clip as the query (other clips only)")
def similar(clip_id: ClipId,
            start: float | None = Query(None, ge=0, allow_inf_nan=False, description="query from (s); default 0"),
            end: float | None = Query(None, gt=0, allow_inf_nan=False,
                                      description="query to (s); default: 10 s after start (at most 600 s)"),
            k: int = Query(10, ge=1, le=100), page: int = Query(1, ge=1, le=20),
            st: AppState = Depends(app_state)):
    import numpy as np

    from nels.web.auth import public_source
    from nels.web.images import read_range

    path, row = _media_file(st, clip_id)
    duration = float(row["duration"] or 0.0)
    start = start or 0.0
    start, end = _span(start, min(end if end is not None else start + 10.0, start + config.MAX_QUERY_AUDIO_SECONDS),
                       duration, clip_id)
    x = np.concatenate(list(read_range(path, start, end)) or [np.zeros(0, np.float32)])
    if x.size == 0:
        raise ApiError(422, f"clip {clip_id} has no audio between {start:g} and {end:g} s")
    # the clip itself is left out (its own neighbouring segments would fill the page): ask for more, keep others
    want = k * page
    res = st.lib.search(audio=x, k=min(200, 3 * want + 10), page=1)
    out = res.to_dict()
    others = [r for r in out["results"] if r.get("clip_id") != clip_id]
    out["results"] = others[want - k:want]
    for r in out["results"]:
        r["source"] = public_source(r.get("source"))
    out.update(query=f"similar to clip {clip_id} {start:.1f}-{end:.1f} s", clip_id=clip_id, start=start, end=end,
               k=k, page=page, has_more=len(others) > want)
    return out


@router.get("/media/{clip_id}", tags=["clips"], summary="The clip's audio (HTTP Range supported)")
def media(clip_id: ClipId, st: AppState = Depends(app_state)):
    path, _ = _media_file(st, clip_id)
    mt = MEDIA_TYPES.get(path.suffix.lower())
    headers = dict(MEDIA_HEADERS)
    if mt is None:  # not a known media type (a library from before types were checked): a download, not a page
        mt = "application/octet-stream"
        headers["Content-Disposition"] = f'attachment; filename="clip-{clip_id}.bin"'
    return FileResponse(path, media_type=mt, headers=headers)


@router.get("/api/spectrogram/{clip_id}.png", tags=["clips"], summary="A spectrogram thumbnail (segment outlined)")
def spectrogram(clip_id: ClipId,
                start: float | None = Query(None, ge=0, allow_inf_nan=False, description="outline from (s)"),
                end: float | None = Query(None, gt=0, allow_inf_nan=False, description="outline to (s)"),
                st: AppState = Depends(app_state)):
    from nels.web.images import outline_png, spectrogram_png

    path, row = _media_file(st, clip_id)
    duration = float(row["duration"] or 0.0)
    span = None
    if start is not None and end is not None:
        if start >= duration:
            raise ApiError(422, f"start {start:g} s is past the end of clip {clip_id} ({duration:.2f} s)")
        end = min(end, duration)  # clamped to the clip
        if end <= start:
            raise ApiError(422, f"end {end:g} s is not after start {start:g} s")
        span = (round(start, 2), round(end, 2))
    cache = SpectrogramCache(st.lib.path / "cache" / "spectrograms")
    key = hashlib.sha1(path.name.encode()).hexdigest()[:16]
    base = cache.get(f"{clip_id}-{key}.png") or cache.put(f"{clip_id}-{key}.png", spectrogram_png(path, duration))
    if span is None:
        return FileResponse(base, media_type="image/png", headers={"Cache-Control": "public, max-age=86400"})
    # only a segment's own span (what the site asks for) is kept; any other span is drawn on the cached
    # spectrogram for this answer alone: a stream of distinct spans costs an outline each, and no disk
    aligned = any(abs(a - span[0]) < 0.01 and abs(b - span[1]) < 0.01 for a, b in st.lib.catalogue.segment_spans(clip_id))
    name = f"{clip_id}-{key}-{int(span[0] * 100)}-{int(span[1] * 100)}.png"
    if aligned and (hit := cache.get(name)):
        return FileResponse(hit, media_type="image/png", headers={"Cache-Control": "public, max-age=86400"})
    png = outline_png(base.read_bytes(), duration, *span)
    if aligned:
        cache.put(name, png)
    return Response(png, media_type="image/png", headers={"Cache-Control": "public, max-age=86400"})


class SpectrogramCache:
    """PNG files in one folder, at most SPECTROGRAM_CACHE_FILES of them and SPECTROGRAM_CACHE_BYTES in all; the
    least recently used go first (a hit refreshes a file's time). Several server processes may share it."""

    def __init__(self, folder: Path, max_files: int | None = None, max_bytes: int | None = None):
        self.folder = folder
        self.max_files = config.SPECTROGRAM_CACHE_FILES if max_files is None else max_files
        self.max_bytes = config.SPECTROGRAM_CACHE_BYTES if max_bytes is None else max_bytes

    def get(self, name: str) -> Path | None:
        f = self.folder / name
        try:
            os.utime(f)
        except OSError:
            return None
        return f

    def put(self, name: str, data: bytes) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        f = self.folder / name
        tmp = f.with_suffix(f".{os.getpid()}-{threading.get_ident()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, f)
        self.evict(keep=f)
        return f

    def evict(self, keep: Path | None = None) -> None:
        files = []
        for e in os.scandir(self.folder):
            if e.name.endswith(".png"):
                try:
                    st = e.stat()
                except OSError:
                    continue
                files.append((st.st_mtime, st.st_size, e.path))
        total = sum(size for _, size, _ in files)
        files.sort()
        n = len(files)
        for _, size, p in files:
            if n <= self.max_files and total <= self.max_bytes:
                break
            if keep is not None and p == str(keep):
                continue
            try:
                os.unlink(p)
            except OSError:
                pass
            n, total = n - 1, total - size


# -- feedback & stats -------------------------------------------------------------------------------------
@router.post("/api/feedback", tags=["feedback"], summary="Mark a result relevant or not (stored in the library)",
             responses={429: {"description": "too many judgements from this client"}})
def feedback(fb: Feedback, request: Request, st: AppState = Depends(app_state)):
    wait = st.feedback_limit.take(request.client.host if request.client else "unknown")
    if wait:
        raise ApiError(429, f"too many judgements from this address: at most {config.FEEDBACK_PER_MINUTE} a minute"
                            f" (try again in {wait:.0f} s)", headers={"Retry-After": str(max(1, round(wait)))})
    cat = st.lib.catalogue
    if not cat.clip_exists(fb.clip_id):
        raise ApiError(404, f"no clip {fb.clip_id}")
    if fb.segment_id is not None and not cat.segment_in_clip(fb.segment_id, fb.clip_id):
        raise ApiError(404, f"clip {fb.clip_id} has no segment {fb.segment_id}")
    fid = cat.add_feedback(" ".join(fb.query.split()), fb.mode, fb.clip_id, fb.segment_id, fb.relevant, fb.label)
    return {"ok": True, "id": fid}


@router.get("/api/feedback", tags=["feedback"], summary="The latest judgement per clip for a query")
def feedback_list(query: str = Query(..., max_length=1000), st: AppState = Depends(app_state)):
    return {"query": query, "feedback": st.lib.catalogue.latest_feedback(" ".join(query.split()))}


@router.get("/api/stats", tags=["library"], summary="Library statistics and available search modes (the library's"
            " folder and recent failures for the admin only)")
def stats(request: Request, st: AppState = Depends(app_state)):
    # counting 100k segments costs about a second: computed once per catalogue state and STATS_TTL seconds,
    # not once per (anonymous) request
    stamp, now = st.lib.data_version(), time.monotonic()
    cached = st.stats_cache
    if cached is None or cached[0] != stamp or now - cached[1] > STATS_TTL:
        cached = st.stats_cache = (stamp, now, st.lib.stats())
    s = dict(cached[2])
    if not is_admin(request):  # local paths and admin-submitted URLs are the admin's business
        s.pop("library", None)
        s.pop("failures", None)
        if s.get("in_place"):  # clips kept in place: which are missing or changed, not where their files are
            s["in_place"] = {k: [{"clip_id": p["clip_id"]} for p in v] if isinstance(v, list) else v
                             for k, v in s["in_place"].items()}
    s["modes"] = st.modes()
    s["admin_enabled"] = bool(st.admin_token)
    return s
