"""The NELS website: a JSON API (OpenAPI docs at /docs) and the static search site.

`create_app` assembles the app over one library: its state (`nels.web.state.AppState`), the routes by
concern (`nels.web.routes`: search, vocabulary, clips, admin, site), JSON errors (`nels.web.errors`) and the ASGI
middleware (`nels.web.middleware`). Every search goes through `Library.search` (one code path with the
CLI). Admin endpoints need the token in $NELS_ADMIN_TOKEN (header `Authorization: Bearer <token>` or
`X-Admin-Token`); without that variable, admin is disabled (403). Running it: `nels.web.server.serve`.
"""
from __future__ import annotations

import gc
from contextlib import asynccontextmanager

from fastapi import FastAPI

from nels import config
from nels.web.errors import install_error_handlers
from nels.web.middleware import AllowedHosts, BodyLimit, SecurityHeaders
from nels.web.routes import admin, clips, run, search, site, vocabulary
from nels.web.state import AppState

MAX_UPLOAD_BYTES = config.max_upload_bytes()


def create_app(library_path, admin_token: str | None = None, max_upload_bytes: int = MAX_UPLOAD_BYTES,
               warm: bool = False, allowed_hosts: list[str] | None = None) -> FastAPI:
    """The app over the library at `library_path` (LibraryError when there is none).

    admin_token : overrides $NELS_ADMIN_TOKEN (read per request when not given).
    max_upload_bytes : the largest uploaded query file (a request body a little larger is refused, 413).
    warm : load the models and indexes at startup, before serving (what `nels serve` does).
    allowed_hosts : the Host names answered (others get 400); None: any (an app embedded in another server,
        which checks hosts itself). `nels serve` always passes a list (`nels.web.server.allowed_hosts`).
    """
    st = AppState(library_path, admin_token, max_upload_bytes)

    @asynccontextmanager
    async def lifespan(app):
        if warm:
            st.warm()
            # everything loaded so far (models, vocabularies, indexes) lives as long as the process: keep
            # it out of the garbage collector's full passes, which otherwise walked those objects and
            # paused a busy server for tens of milliseconds at a time
            gc.collect()
            gc.freeze()
        st.start()
        yield
        st.close()

    app = FastAPI(title="NELS", version="0.1.0", lifespan=lifespan,
                  description="Never-Ending Learner of Sounds: search a sound collection by text and by sound.")
    app.state.nels = st
    install_error_handlers(app)
    for routes in (search, vocabulary, clips, admin, run, site):
        app.include_router(routes.router)
    site.mount_static(app)
    app.add_middleware(BodyLimit, limit=max_upload_bytes + 256 * 1024)  # room for the multipart envelope
    app.add_middleware(AllowedHosts, hosts=allowed_hosts)  # before the body is read
    app.add_middleware(SecurityHeaders)  # outermost: on every answer, refusals included
    return app

