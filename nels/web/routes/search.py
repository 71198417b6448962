"""Search by text (GET /api/search), by an uploaded sound (POST /api/search), and /api/modes."""
from __future__ import annotations

import asyncio
import json
from typing import Literal

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from fastapi.responses import Response

from nels import config
from nels.errors import DecodeError
from nels.web.errors import ApiError
from nels.web.auth import public_source
from nels.web.state import AppState, app_state

MAX_QUERY_SECONDS = config.MAX_QUERY_AUDIO_SECONDS
Mode = Literal["linguistic", "acoustic", "joint", "fused"]
Sort = Literal["relevance", "duration", "-duration", "label", "source"]
SORT_POOL = 200  # a sort other than relevance orders the most relevant results this many deep, then pages them

router = APIRouter(tags=["search"])


def _json_default(o):
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def _json_bytes(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=_json_default).encode("utf-8")


def _answer(res, query: str, k: int, page: int, sort: str = "relevance") -> dict:
    """The JSON answer; with a `sort` other than relevance, `res` holds the SORT_POOL most relevant results, which
    are ordered by it and cut to page `page` of `k`."""
    out = res.to_dict()
    out.update(query=query, k=k, page=page, has_more=len(res) >= k, sort=sort)
    for r in out["results"]:  # answers are cached and shared: a local file shows its name, never its path
        r["source"] = public_source(r.get("source"))
    if sort != "relevance":
        rows = sorted(out["results"], key=_SORT_KEYS[sort])
        out.update(results=rows[(page - 1) * k:page * k], has_more=len(rows) > page * k, sorted_among=len(rows))
    return out


_SORT_KEYS = {  # stable sorts: ties keep their relevance order
    "duration": lambda r: float(r.get("duration") or 0.0),
    "-duration": lambda r: -float(r.get("duration") or 0.0),
    "label": lambda r: ((r.get("labels") or [{}])[0].get("label") or "\uffff").lower(),
    "source": lambda r: str(r.get("source") or r.get("title") or "\uffff").lower(),
}


def _pool(k: int, page: int, sort: str) -> tuple[int, int]:
    """(k, page) to ask the search for: the page itself, or the SORT_POOL most relevant to sort."""
    return (k, page) if sort == "relevance" else (SORT_POOL, 1)


@router.get("/api/search", summary="Search by text")
async def search_text(q: str = Query(..., max_length=1000, description="what to look for, e.g. 'dog barking'"),
                      mode: Mode | None = None, k: int = Query(10, ge=1, le=200),
                      page: int = Query(1, ge=1, le=1000), label: str | None = Query(None, max_length=200),
                      source: str | None = Query(None, max_length=1000),
                      min_duration: float | None = Query(None, allow_inf_nan=False),
                      max_duration: float | None = Query(None, allow_inf_nan=False),
                      sort: Sort = Query("relevance", description="relevance, or the most relevant results ordered"
                                         " by clip duration (-duration: longest first), top label or source"),
                      st: AppState = Depends(app_state)):
    # Answers are cached, serialised, per library state: a popular query or paging back costs a dict
    # lookup on the event loop (no thread hop, no JSON encoding). A miss runs in the search pool, with
    # no global lock: the catalogue gives each thread its own SQLite connection, and FAISS indexes are
    # only ever swapped, never mutated in place.
    lib = st.lib
    key = (" ".join(q.split()).lower(), mode, k, page, label, source, min_duration, max_duration, sort)
    # any commit by anyone else (an ingest, a removal, a re-index, another server process) changes the
    # catalogue's data_version and retires every cached answer; counting a weak query does not (its log is
    # not the catalogue), and is done for every asking, answered from the cache or not
    stamp = lib.data_version()
    hit = st.results.get(key, stamp)
    if hit is not None:
        st.log_weak(q, hit[1])
        return Response(hit[0], media_type="application/json")
    pending = st.inflight.get((key, stamp))
    if pending is not None:  # the same search is running for another client: share its answer
        body, coverage = await asyncio.shield(pending)
        st.log_weak(q, coverage)
        return Response(body, media_type="application/json")

    def run() -> tuple[bytes, dict | None]:
        ask_k, ask_page = _pool(k, page, sort)
        res = lib.search(text=q, mode=mode, k=ask_k, page=ask_page, label=label, source=source,
                         min_duration=min_duration, max_duration=max_duration, log_weak=False)  # counted below
        return _json_bytes(_answer(res, q, k, page, sort)), res.coverage

    async def prepare_then_run() -> tuple[bytes, dict | None]:
        if st.text_ok(stamp):
            await st.text_batcher.prepare(" ".join(q.split()))
        return await asyncio.get_running_loop().run_in_executor(st.search_pool, run)

    fut = asyncio.ensure_future(prepare_then_run())
    st.inflight[(key, stamp)] = fut
    try:
        body, coverage = await asyncio.shield(fut)
    finally:
        st.inflight.pop((key, stamp), None)
    st.results.put(key, stamp, (body, coverage))
    st.log_weak(q, coverage)
    return Response(body, media_type="application/json")


@router.post("/api/search", summary="Search by an uploaded sound (optionally with text)")
async def search_audio(audio: UploadFile = File(..., description="an audio file (wav, flac, mp3, ogg, webm...)"),
                       q: str | None = Form(None, max_length=1000), mode: Mode | None = Form(None),
                       k: int = Form(10, ge=1, le=200), page: int = Form(1, ge=1, le=1000),
                       start: float | None = Form(None, ge=0, le=MAX_QUERY_SECONDS, allow_inf_nan=False),
                       end: float | None = Form(None, gt=0, le=MAX_QUERY_SECONDS, allow_inf_nan=False),
                       label: str | None = Form(None, max_length=200), source: str | None = Form(None, max_length=1000),
                       min_duration: float | None = Form(None, allow_inf_nan=False),
                       max_duration: float | None = Form(None, allow_inf_nan=False),
                       sort: Sort = Form("relevance"),
                       st: AppState = Depends(app_state)):
    limit_bytes = st.max_upload_bytes
    data = await audio.read(limit_bytes + 1)
    if len(data) > limit_bytes:
        raise ApiError(413, f"upload too large: the limit is {limit_bytes // (1024 * 1024)} MB")
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
        ask_k, ask_page = _pool(k, page, sort)
        return st.lib.search(text=q, audio=x, mode=mode, k=ask_k, page=ask_page, start=start, end=end,
                             label=label, source=source, min_duration=min_duration, max_duration=max_duration)

    res = await asyncio.get_running_loop().run_in_executor(st.search_pool, run)
    return _answer(res, q or f"audio: {audio.filename or 'upload'}", k, page, sort)


@router.get("/api/modes", summary="Which search modes this library supports")
def modes(st: AppState = Depends(app_state)):
    return st.modes()
