"""Running the website: `serve` (uvicorn, one or several server processes over one library)."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from nels import config
from nels.web.app import create_app

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def allowed_hosts(host: str = "127.0.0.1", names: str | None = None) -> list[str]:
    """The Host names `nels serve` answers to: `names` (comma-separated; else $NELS_ALLOWED_HOSTS), else the
    loopback names plus the address served on when it is a specific one (not 0.0.0.0 or ::)."""
    names = names if names is not None else config.ALLOWED_HOSTS.get()
    given = [n.strip() for n in (names or "").split(",") if n.strip()]
    if given:
        return given
    out = list(config.LOOPBACK_HOSTS)
    if host not in ("0.0.0.0", "::", "") and host not in out:
        out.append(host)
    return out


def app_from_env() -> FastAPI:
    """The app factory each worker process of `serve(..., workers=N)` calls (the library path comes in
    $NELS_SERVE_LIBRARY and the Host names in $NELS_ALLOWED_HOSTS, both set by `serve`)."""
    return create_app(config.SERVE_LIBRARY.get(), warm=True, allowed_hosts=allowed_hosts())


def client_url(host: str, port: int) -> str:
    """The URL a client on this machine uses for a server bound to `host` (0.0.0.0 / :: -> loopback)."""
    h = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    return f"http://[{h}]:{port}" if ":" in h else f"http://{h}:{port}"


def announce(library: Path, url: str) -> Path | None:
    """Write `<library>/server.json` (url, pid, library, started): `nels search` finds a running server of
    the same library there and asks it instead of loading the models itself. None when the folder is
    read-only (the server still serves; the CLI then searches locally)."""
    f = Path(library) / config.SERVER_FILE
    tmp = f.with_name(f".{config.SERVER_FILE}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps({"url": url, "pid": os.getpid(), "library": str(Path(library).resolve()),
                                   "started": time.time()}))
        tmp.replace(f)
    except OSError:
        return None
    return f


def withdraw(library: Path) -> None:
    """Remove `<library>/server.json` if this process wrote it (another server may have replaced it)."""
    f = Path(library) / config.SERVER_FILE
    try:
        if json.loads(f.read_text()).get("pid") == os.getpid():
            f.unlink()
    except (OSError, ValueError):
        pass


def default_workers() -> int:
    """One server process per core (at most 4): a search holds the GIL while it runs, so one process
    serves one search at a time however many threads it has."""
    return max(1, min(4, os.cpu_count() or 1))


def serve(library, host: str = "127.0.0.1", port: int = 8000, workers: int | None = None,
          hosts: str | None = None) -> int:
    """Serve the website and API over the library at `library` until interrupted; returns 0.

    The library is opened (and migrated) first, so a bad path fails here (LibraryError), before any
    server starts. workers : server processes (None: `default_workers()`); several share the library
    (and its admin jobs) through the catalogue. hosts : the Host names answered, comma-separated
    (`--allowed-hosts`; None: `allowed_hosts(host)`).
    """
    names = allowed_hosts(host, hosts)
    app = create_app(library, warm=True, allowed_hosts=names)
    path = app.state.nels.lib.path
    workers = workers or default_workers()
    if host not in LOOPBACK and not config.admin_token():
        print("nels: note: serving beyond loopback; admin endpoints are disabled (no NELS_ADMIN_TOKEN)")
    if host not in LOOPBACK and "*" not in names:
        print(f"nels: note: answering only requests for {', '.join(names)} (add names with --allowed-hosts)")
    url = client_url(host, port)
    print(f"nels: loading models… (the server answers at http://{host}:{port}/ once they are loaded)",
          file=sys.stderr, flush=True)
    ready = (f"nels: serving {path} at http://{host}:{port}/ (API docs at /docs; {workers} worker"
             f"{'s' if workers > 1 else ''})")
    try:
        if workers == 1:
            server = AnnouncingServer(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                      access_log=False), path, url, ready)
            server.run()
        else:
            app.state.nels.lib.close()
            os.environ[config.SERVE_LIBRARY.env] = str(path)
            os.environ[config.ALLOWED_HOSTS.env] = ",".join(names)
            from uvicorn.supervisors import Multiprocess

            settings = uvicorn.Config("nels.web.server:app_from_env", factory=True, workers=workers, host=host,
                                      port=port, log_level="warning", access_log=False)
            sock = settings.bind_socket()  # what uvicorn.run does, with the announcement once the port is open
            sock.listen(settings.backlog)  # (bind_socket does not listen: the workers would, once loaded)
            print(ready, flush=True)  # connections wait in the backlog until a worker has loaded its models
            announce(path, url)
            Multiprocess(settings, sockets=[sock]).run()
    finally:
        withdraw(path)
    return 0


class AnnouncingServer(uvicorn.Server):
    """uvicorn's server that says it is ready and writes the library's server.json once it listens (the
    models are loaded by then), and removes it when it stops. (With several workers the file stays after a
    kill; `nels search` ignores it once its process is gone.)"""

    def __init__(self, settings: uvicorn.Config, library: Path, url: str, ready: str):
        super().__init__(settings)
        self.library, self.url, self.ready = library, url, ready

    async def startup(self, sockets=None):
        await super().startup(sockets=sockets)
        if self.started and not self.should_exit:
            print(self.ready, flush=True)
            announce(self.library, self.url)

    async def shutdown(self, sockets=None):
        withdraw(self.library)  # here: uvicorn re-raises SIGTERM after run(), past any `finally`
        await super().shutdown(sockets=sockets)
