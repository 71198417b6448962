"""The static site: one page (/, /clip/{id}, /admin, /vocabulary) and its assets under /static."""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent.parent / "static"
SITE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:;"
                " style-src 'self'; script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none';"
                " frame-ancestors 'none'"}

router = APIRouter(include_in_schema=False)


def _page(headers: dict | None = None) -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html",
                        headers={**SITE_HEADERS, "Cache-Control": "no-cache", **(headers or {})})


@router.get("/")
def home():
    return _page()


@router.get("/clip/{clip_id}")
def clip_page(clip_id: int):
    # the browser asks for the clip's data (what the first paint waits on) while it loads the scripts, not
    # after them: the server reads the clip meanwhile (clip.js's fetch of the same URL takes the preloaded answer)
    return _page({"Link": f"</api/clips/{clip_id}?segments=false>; rel=preload; as=fetch; crossorigin=anonymous"})


@router.get("/admin")
def admin_page():
    return _page()


@router.get("/vocabulary")
def vocabulary_page():
    return _page()


def mount_static(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
