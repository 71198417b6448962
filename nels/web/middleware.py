"""Pure ASGI middleware (Starlette's @app.middleware("http") wraps every response in a stream and cost a
third of a cached search's server time): security headers on every answer, the request size cap, and the
Host check (DNS rebinding)."""
from __future__ import annotations

import json

from nels.web.errors import ApiError


class SecurityHeaders:
    """Adds nosniff and same-origin referrer headers to every answer that does not set them."""

    EXTRA = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin")]

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(msg):
            if msg["type"] == "http.response.start":
                have = {k.lower() for k, _ in msg.get("headers", [])}
                msg["headers"] = list(msg.get("headers", [])) + [h for h in self.EXTRA if h[0] not in have]
            await send(msg)

        await self.app(scope, receive, with_headers)


class BodyLimit:
    """POST/PUT/PATCH bodies over `limit` bytes get 413 JSON, whether or not Content-Length is sent, before
    the multipart parser spools anything."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        try:
            declared = int(headers.get(b"content-length", b"-1"))
        except ValueError:
            declared = -1
        if declared > self.limit:
            return await self._too_large(send)
        seen, over, started = 0, False, False

        async def limited_receive():
            nonlocal seen, over
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    over = True
                    raise ApiError(413, "too large")
            return msg

        async def guarded_send(msg):
            nonlocal started
            if over:
                return  # the app's own (error) answer is replaced by the 413 below
            started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except ApiError:
            if not over:
                raise
        if over and not started:
            await self._too_large(send)

    async def _too_large(self, send):
        body = json.dumps({"error": f"upload too large: the limit is {self.limit // (1024 * 1024)} MB"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def host_name(value: str) -> str:
    """The name of a Host header value, without its port, lower-case ("[::1]:8000" -> "::1")."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class AllowedHosts:
    """Answers only requests whose Host header names this server (`--allowed-hosts`): a page on another site
    whose name an attacker re-points at 127.0.0.1 (DNS rebinding) then cannot read the API. `hosts` None or
    containing "*": any host. A name "*.example.org" allows its subdomains."""

    def __init__(self, app, hosts):
        self.app = app
        self.hosts = None if hosts is None or "*" in hosts else {host_name(h) for h in hosts}

    def allowed(self, host: str) -> bool:
        if self.hosts is None:
            return True
        name = host_name(host)
        return name in self.hosts or any(h.startswith("*.") and name.endswith(h[1:]) for h in self.hosts)

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or self.hosts is None:
            return await self.app(scope, receive, send)
        host = next((v.decode("latin-1") for k, v in scope.get("headers") or [] if k == b"host"), "")
        if self.allowed(host):
            return await self.app(scope, receive, send)
        if scope["type"] != "http":
            return await send({"type": "websocket.close", "code": 1008})
        body = json.dumps({"error": f"host not allowed: {host[:100]!r} (the server answers to"
                                    f" {', '.join(sorted(self.hosts))}; see --allowed-hosts)"}).encode()
        await send({"type": "http.response.start", "status": 400,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
