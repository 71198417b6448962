"""A loopback HTTP proxy that applies the SSRF guard to every request yt-dlp makes.

yt-dlp's extractors and downloaders make requests of their own: the generic extractor reads a page and
follows its `<audio src>`, manifests name segment URLs, servers redirect. Giving yt-dlp this proxy (its
`proxy` option, which also overrides proxy variables and NO_PROXY of the environment) puts each of those
requests through `nels.sources.guard`: the destination host is resolved once, refused unless every address
is allowed, and the connection goes to the address that was checked. HTTPS arrives as CONNECT (the TLS
session stays end to end between yt-dlp and the server); plain HTTP as an absolute-form request, forwarded
with `Connection: close`.

    with GuardProxy() as proxy:
        opts["proxy"] = proxy.url
        ...
    proxy.refused   # what was refused, for the error message
"""
from __future__ import annotations

import socket
import socketserver
import threading
from urllib.parse import urlsplit

from nels.errors import SourceError
from nels.sources import guard

MAX_HEAD = 64 * 1024
HOP_HEADERS = {b"proxy-connection", b"proxy-authorization", b"connection", b"keep-alive"}


class _Handler(socketserver.BaseRequestHandler):
    server: "_Server"

    def handle(self) -> None:
        client: socket.socket = self.request
        client.settimeout(self.server.timeout_s)
        try:
            head, rest = self._read_head(client)
        except (OSError, ValueError):
            return
        lines = head.split(b"\r\n")
        try:
            method, target, version = lines[0].split(b" ", 2)
        except ValueError:
            return self._reply(client, 400, "bad request line")
        try:
            if method.upper() == b"CONNECT":
                host, _, port = target.decode("latin-1").rpartition(":")
                upstream = self._connect(host, int(port))
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                if rest:
                    upstream.sendall(rest)
            else:
                url = target.decode("latin-1")
                parts = urlsplit(url)
                if parts.scheme != "http" or not parts.hostname:
                    raise SourceError(f"{url[:300]}: only http(s) URLs are accepted")
                upstream = self._connect(parts.hostname, parts.port or 80)
                path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
                out = [method + b" " + path.encode("latin-1") + b" " + version]
                out += [ln for ln in lines[1:] if ln and ln.split(b":", 1)[0].strip().lower() not in HOP_HEADERS]
                out.append(b"Connection: close")
                upstream.sendall(b"\r\n".join(out) + b"\r\n\r\n" + rest)
        except SourceError as exc:
            self.server.refused.append(str(exc))
            return self._reply(client, 403, str(exc))
        except (OSError, ValueError) as exc:
            return self._reply(client, 502, f"cannot reach the server ({exc})")
        with upstream:
            self._relay(client, upstream)

    def _read_head(self, sock: socket.socket) -> tuple[bytes, bytes]:
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(8192)
            if not chunk:
                raise ValueError("closed before the request head ended")
            buf += chunk
            if len(buf) > MAX_HEAD:
                raise ValueError("request head too large")
        head, _, rest = buf.partition(b"\r\n\r\n")
        return head, rest

    def _connect(self, host: str, port: int) -> socket.socket:
        if not 0 < port < 65536:
            raise SourceError(f"{host}:{port}: bad port")
        sock = guard.pinned_connection((host.strip("[]"), port), self.server.timeout_s)
        sock.settimeout(self.server.timeout_s)
        return sock

    @staticmethod
    def _reply(sock: socket.socket, status: int, message: str) -> None:
        body = message.encode("utf-8", "replace")
        reason = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway"}[status]
        try:
            sock.sendall(f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        except OSError:
            pass

    @staticmethod
    def _relay(a: socket.socket, b: socket.socket) -> None:
        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(1 << 16):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

        def answer() -> None:  # the server is done: so is the client's connection (it may idle in a pool)
            pump(b, a)
            try:
                a.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        t = threading.Thread(target=answer, daemon=True)
        t.start()
        pump(a, b)
        t.join()


class _Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    refused: list[str]
    timeout_s: float


class GuardProxy:
    """The proxy, on 127.0.0.1 at a free port, for the life of a `with` block."""

    def __init__(self, timeout: float = 30.0):
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.refused = []
        self._server.timeout_s = timeout
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def refused(self) -> list[str]:
        return list(self._server.refused)

    def __enter__(self) -> "GuardProxy":
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="nels-guard-proxy", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
