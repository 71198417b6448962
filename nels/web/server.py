"""Running the website: `serve` (uvicorn, one or several server processes over one library)."""
from __future__ import annotations

import os

from fastapi import FastAPI

from nels import config
from nels.web.app import create_app

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def app_from_env() -> FastAPI:
    """The app factory each worker process of `serve(..., workers=N)` calls (the library path comes in
    $NELS_SERVE_LIBRARY, set by `serve`)."""
    return create_app(config.SERVE_LIBRARY.get(), warm=True)


def default_workers() -> int:
    """One server process per core (at most 4): a search holds the GIL while it runs, so one process
    serves one search at a time however many threads it has."""
    return max(1, min(4, os.cpu_count() or 1))


def serve(library, host: str = "127.0.0.1", port: int = 8000, workers: int | None = None) -> int:
    """Serve the website and API over the library at `library` until interrupted; returns 0.

    The library is opened (and migrated) first, so a bad path fails here (LibraryError), before any
    server starts. workers : server processes (None: `default_workers()`); several share the library
    (and its admin jobs) through the catalogue.
    """
    import uvicorn

    app = create_app(library, warm=True)
    path = app.state.nels.lib.path
    workers = workers or default_workers()
    if host not in LOOPBACK and not config.admin_token():
        print("nels: note: serving beyond loopback; admin endpoints are disabled (no NELS_ADMIN_TOKEN)")
    print(f"nels: serving {path} at http://{host}:{port}/ (API docs at /docs; {workers} worker"
          f"{'s' if workers > 1 else ''})", flush=True)
    if workers == 1:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    else:
        app.state.nels.lib.close()
        os.environ[config.SERVE_LIBRARY.env] = str(path)
        uvicorn.run("nels.web.server:app_from_env", factory=True, workers=workers, host=host, port=port,
                    log_level="warning", access_log=False)
    return 0

