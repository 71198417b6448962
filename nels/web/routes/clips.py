"""A clip and its timeline, its audio (HTTP Range), its spectrogram, relevance feedback and /api/stats."""
from __future__ import annotations

import hashlib
import json
import mimetypes
import os
import threading
from pathlib import Path

from fastapi import APIRouter, Depends, Query
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from nels.web.errors import ApiError
from nels.web.state import AppState, app_state

MEDIA_TYPES = {".flac": "audio/flac", ".wav": "audio/wav", ".mp3": "audio/mpeg", ".ogg": "audio/ogg",
               ".opus": "audio/ogg", ".oga": "audio/ogg", ".m4a": "audio/mp4", ".aac": "audio/aac",
               ".webm": "audio/webm", ".mp4": "video/mp4", ".mkv": "video/x-matroska"}

router = APIRouter()


class Feedback(BaseModel):
    query: str = Field(..., min_length=1, max_length=1000)
    mode: str | None = Field(None, max_length=32)
    clip_id: int
    segment_id: int | None = None
    relevant: bool
    label: str | None = Field(None, max_length=200)


def events(segments: list[dict]) -> list[dict]:
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


def _media_file(st: AppState, clip_id: int) -> tuple[Path, dict]:
    """The clip's media file (inside the library's media folder, or 404) and its {media_path, duration}."""
    lib = st.lib
    row = lib.catalogue.clip_media(clip_id)
    if row is None:
        raise ApiError(404, f"no clip {clip_id}")
    root = (lib.path / "media").resolve()
    path = (lib.path / row["media_path"]).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise ApiError(404, f"the media of clip {clip_id} is missing")
    return path, row


@router.get("/api/clips/{clip_id}", tags=["clips"], summary="A clip, its segments and its timeline of sound events")
def clip(clip_id: int, st: AppState = Depends(app_state)):
    c = st.lib.clip(clip_id)
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
    c["events"] = events(c["segments"])
    return c


@router.get("/media/{clip_id}", tags=["clips"], summary="The clip's audio (HTTP Range supported)")
def media(clip_id: int, st: AppState = Depends(app_state)):
    path, _ = _media_file(st, clip_id)
    mt = MEDIA_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=mt, headers={"Cache-Control": "public, max-age=86400",
                                                      "Accept-Ranges": "bytes"})


@router.get("/api/spectrogram/{clip_id}.png", tags=["clips"], summary="A spectrogram thumbnail (segment outlined)")
def spectrogram(clip_id: int, start: float | None = Query(None, ge=0), end: float | None = Query(None, gt=0),
                st: AppState = Depends(app_state)):
    from nels.web.images import spectrogram_png

    path, row = _media_file(st, clip_id)
    span = (round(start, 2), round(end, 2)) if start is not None and end is not None else None
    key = hashlib.sha1(f"{path.name}|{span}".encode()).hexdigest()[:16]
    cache = st.lib.path / "cache" / "spectrograms" / f"{clip_id}-{key}.png"
    if not cache.exists():
        png = spectrogram_png(path, row["duration"], *(span or (None, None)))
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{threading.get_ident()}.tmp")
        tmp.write_bytes(png)
        os.replace(tmp, cache)
    return FileResponse(cache, media_type="image/png", headers={"Cache-Control": "public, max-age=86400"})


# -- feedback & stats -------------------------------------------------------------------------------------
@router.post("/api/feedback", tags=["feedback"], summary="Mark a result relevant or not (stored in the library)")
def feedback(fb: Feedback, st: AppState = Depends(app_state)):
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


@router.get("/api/stats", tags=["library"], summary="Library statistics and available search modes")
def stats(st: AppState = Depends(app_state)):
    s = st.lib.stats()
    s["modes"] = st.modes()
    s["admin_enabled"] = bool(st.admin_token)
    return s
