"""`nels serve`."""
from __future__ import annotations

from nels.web.server import serve


def cli_serve(args) -> int:
    return serve(args.library, args.host, args.port, getattr(args, "workers", None),
                 getattr(args, "allowed_hosts", None))
