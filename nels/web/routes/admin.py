"""Admin endpoints (crawls, ingests, jobs, models, learning curves) behind `require_admin`.

They need the token in $NELS_ADMIN_TOKEN (or the app's `admin_token`), sent as `Authorization: Bearer
<token>` or `X-Admin-Token`; without a token configured, admin is disabled (403).
"""
from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi import Path as PathParam
from fastapi.responses import Response
from pydantic import BaseModel, Field

from nels.web.auth import require_admin
from nels.web.errors import ApiError
from nels.web.state import MAX_ID, AppState, app_state


router = APIRouter(tags=["admin"], dependencies=[Depends(require_admin)])


class CrawlRequest(BaseModel):
    queries: list[Annotated[str, Field(max_length=500)]] = Field(..., min_length=1, max_length=50)
    per_query: int = Field(10, ge=1, le=100)
    max_duration: float | None = Field(600.0, gt=0, le=86400, allow_inf_nan=False)


class IngestRequest(BaseModel):
    urls: list[Annotated[str, Field(max_length=4000)]] = Field(..., min_length=1, max_length=500)
    max_duration: float | None = Field(None, gt=0, le=86400, allow_inf_nan=False)


def _job(st: AppState, job: dict) -> dict:
    """A job with its progress: crawl items touched since it started, and time elapsed."""
    progress = None
    if job.get("started_at"):
        progress = {"items": st.lib.catalogue.items_touched_since(job["started_at"]),
                    "elapsed_s": round((job.get("finished_at") or time.time()) - job["started_at"], 1)}
    return {**job, "progress": progress}


@router.post("/api/admin/crawl", status_code=202, summary="Queue a crawl (YouTube search through yt-dlp)")
def admin_crawl(req: CrawlRequest, st: AppState = Depends(app_state)):
    queries = [" ".join(q.split()) for q in req.queries if q.strip()]
    if not queries:
        raise ApiError(400, "give at least one non-empty query")
    job = st.jobs.submit("crawl", {"queries": queries, "per_query": req.per_query, "max_duration": req.max_duration})
    return _job(st, job)


@router.post("/api/admin/ingest", status_code=202,
             summary="Queue an ingest of public http(s) URLs (private/loopback addresses are refused)")
def admin_ingest(req: IngestRequest, st: AppState = Depends(app_state)):
    from nels.sources.guard import check_public_url

    urls = [u.strip() for u in req.urls if u.strip()]
    if not urls:
        raise ApiError(400, "give at least one URL")
    for u in urls:
        check_public_url(u)  # SourceError -> 400, before anything is queued
    job = st.jobs.submit("ingest", {"urls": urls, "max_duration": req.max_duration})
    return _job(st, job)


@router.get("/api/admin/jobs", summary="Background jobs, newest first")
def admin_jobs(st: AppState = Depends(app_state)):
    return {"jobs": [_job(st, j) for j in st.jobs.list()]}


@router.get("/api/admin/jobs/{job_id}", summary="One background job")
def admin_job(job_id: int = PathParam(..., ge=0, le=MAX_ID), st: AppState = Depends(app_state)):
    j = st.jobs.get(job_id)
    if j is None:
        raise ApiError(404, f"no job {job_id}")
    return _job(st, j)


@router.get("/api/admin/models", summary="Models known to the library")
def admin_models(st: AppState = Depends(app_state)):
    from nels.encoders.base import DEFAULT_MODEL_DIR

    lib = st.lib
    rows = []
    for m in lib.catalogue.models():
        labels = m.pop("labels") or []
        rows.append({**m, "n_labels": len(labels), "labels": labels[:200]})
    current = {"model": lib.get_meta("model"), "model_name": lib.get_meta("model_name")}
    return {"library": current, "models": rows,
            "default_model": {"path": str(DEFAULT_MODEL_DIR), "present": (DEFAULT_MODEL_DIR / "model.json").exists()}}


@router.get("/api/admin/iterations", summary="Learning-loop iterations")
def admin_iterations(st: AppState = Depends(app_state)):
    rows = st.lib.catalogue.iterations()
    return {"iterations": rows, "chart": "/api/admin/iterations.png" if rows else None}


@router.get("/api/admin/iterations.png", summary="AP per class per iteration")
def admin_iterations_png(st: AppState = Depends(app_state)):
    from nels.web.images import iterations_png

    rows = st.lib.catalogue.iterations()
    if not rows:
        raise ApiError(404, "no learning iterations recorded yet (run 'nels learn')")
    return Response(iterations_png(rows), media_type="image/png", headers={"Cache-Control": "no-store"})
