"""Who is asking: the admin (the token of $NELS_ADMIN_TOKEN, sent as `Authorization: Bearer <token>` or
`X-Admin-Token`) or anyone. `require_admin` guards the admin routes; `is_admin` lets a public route show the
admin more (the library's path, failures, local source paths) without refusing anyone else."""
from __future__ import annotations

import hmac
from pathlib import PurePath

from fastapi import Request

from nels.sources.source import is_url
from nels.web.errors import ApiError


def public_source(value: str | None) -> str | None:
    """A source as anyone may see it: URLs as they are, a local path reduced to its file name."""
    if not value or is_url(value):
        return value
    return PurePath(value).name


def _given(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-admin-token", "")


def is_admin(request: Request) -> bool:
    """True when admin is enabled and the request carries the right token."""
    token = request.app.state.nels.admin_token
    given = _given(request)
    return bool(token) and bool(given) and hmac.compare_digest(given.encode(), token.encode())


async def require_admin(request: Request) -> None:
    """401 without a token, 403 with a wrong one or when admin is disabled."""
    token = request.app.state.nels.admin_token
    if not token:
        raise ApiError(403, "admin is disabled on this server (start it with NELS_ADMIN_TOKEN set)")
    given = _given(request)
    if not given:
        raise ApiError(401, "admin token required (Authorization: Bearer <token>)")
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise ApiError(403, "wrong admin token")
