"""SSRF guard: what the website asks NELS to fetch must not reach loopback, private, link-local, carrier-grade
NAT or any other non-global address, on the first hop or any later one.

Three parts, all going through `is_allowed(ip)` (the policy) and `resolve(host, port)` (name resolution):

* `check_public_url(url)` resolves a URL's host and refuses it unless every address is allowed.
* `guarded_opener()` is a urllib opener for `HttpSource`: every connection it opens (the first request and
  every redirect hop) resolves its host once, checks the addresses and connects to the checked address
  (pinned: no second resolution for a DNS rebinding to slip into); TLS still verifies the host name (SNI).
  No proxies from the environment, no file:/ftp:/data: handlers, only http(s) redirects.
* `GuardProxy` (`nels.sources.guardproxy`) is the same check as a loopback HTTP proxy for yt-dlp, whose
  extractors and downloaders make requests of their own (a page's `<audio src>`, manifests, redirects).

`is_allowed` and `resolve` are module attributes, looked up at each call: a test (or a deployment with its
own rules) replaces them, e.g. to treat one loopback address as "public".
"""
from __future__ import annotations

import http.client
import ipaddress
import socket
import urllib.request
from urllib.parse import urlparse

from nels.errors import SourceError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
CGNAT = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT (a cloud metadata service lives there)
NAT64 = ipaddress.ip_network("64:ff9b::/96")


def embedded(ip: IPAddress) -> list[IPAddress]:
    """`ip` and the IPv4 addresses it carries: IPv4-mapped (::ffff:a.b.c.d), 6to4 (2002:aabb:ccdd::),
    Teredo (server and client) and NAT64 (64:ff9b::a.b.c.d)."""
    out: list[IPAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            out.append(ip.ipv4_mapped)
        if ip.sixtofour is not None:
            out.append(ip.sixtofour)
        if ip.teredo is not None:
            out.extend(ip.teredo)
        if ip in NAT64:
            out.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return out


def default_is_allowed(ip: IPAddress) -> bool:
    """Only global unicast addresses, whatever form they are written in."""
    for a in embedded(ip):
        if not a.is_global or a.is_multicast or a in CGNAT:
            return False
    return True


is_allowed = default_is_allowed  # the policy (replace it to change what counts as public)


def _system_resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    return [info[4][0] for info in infos]


resolve = _system_resolve  # host, port -> addresses (replace it for tests or a resolver of your own)


def _parse_ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text.split("%")[0])


def checked_addresses(host: str, port: int, what: str | None = None) -> list[str]:
    """The addresses of `host`, every one of them allowed (SourceError otherwise), in resolver order."""
    what = what or host
    if not host:
        raise SourceError(f"{what}: no host")
    try:
        addrs = resolve(host.strip("[]"), port)
    except (socket.gaierror, UnicodeError, OSError) as exc:
        raise SourceError(f"{what}: cannot resolve {host} ({getattr(exc, 'strerror', None) or exc})") from None
    if not addrs:
        raise SourceError(f"{what}: cannot resolve {host}")
    out = []
    for a in addrs:
        try:
            ip = _parse_ip(a)
        except ValueError:
            raise SourceError(f"{what}: refused, {host} resolves to an unparsable address ({a})") from None
        if not is_allowed(ip):
            raise SourceError(f"{what}: refused, {host} resolves to a non-public address ({ip})")
        if a not in out:
            out.append(a.split("%")[0])
    return out


def split_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL; SourceError for anything else or a malformed one."""
    try:
        parsed = urlparse(url)
        port = parsed.port
        host = parsed.hostname
    except ValueError as exc:  # "http://[::1", port 99999
        raise SourceError(f"{url[:300]}: not a valid URL ({exc})") from None
    if parsed.scheme not in ("http", "https"):
        raise SourceError(f"{url[:300]}: only http(s) URLs are accepted")
    if not host:
        raise SourceError(f"{url[:300]}: no host")
    return parsed.scheme, host, port or (443 if parsed.scheme == "https" else 80)


def check_public_url(url: str) -> list[str]:
    """Raise SourceError unless `url` is http(s) and every address its host resolves to is allowed.
    Returns the checked addresses."""
    _, host, port = split_url(url)
    return checked_addresses(host, port, url[:300])


# -- urllib: every connection checked and pinned -----------------------------------------------------------
def pinned_connection(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None):
    """`socket.create_connection` that resolves the host once, refuses a non-allowed address and connects to
    the address it checked."""
    host, port = address
    err: OSError | None = None
    for ip in checked_addresses(host, port):
        try:
            return socket.create_connection((ip, port), timeout, source_address)
        except OSError as exc:
            err = exc
    raise err if err is not None else OSError(f"cannot connect to {host}")


class PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = pinned_connection


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    """TLS over the pinned socket; the certificate is still checked against the host name (SNI)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = pinned_connection


class _HTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(PinnedHTTPConnection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req):
        return self.do_open(PinnedHTTPSConnection, req, context=self._context)


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows http(s) redirects only, each target checked before it is requested (the connection checks it
    again, pinned, when it opens)."""

    max_redirections = 5

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        check_public_url(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def guarded_opener() -> urllib.request.OpenerDirector:
    """An opener whose every hop is checked and pinned (see the module docstring)."""
    opener = urllib.request.OpenerDirector()
    for h in (urllib.request.ProxyHandler({}), urllib.request.UnknownHandler(), _HTTPHandler(), _HTTPSHandler(),
              urllib.request.HTTPDefaultErrorHandler(), _RedirectHandler(), urllib.request.HTTPErrorProcessor()):
        opener.add_handler(h)
    return opener


def plain_opener() -> urllib.request.OpenerDirector:
    """The opener of trusted input (the command line): urllib's usual one."""
    return urllib.request.build_opener()

