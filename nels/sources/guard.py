"""SSRF guard: URLs that come from the website must not reach loopback, link-local or private hosts."""
from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlparse

from nels.errors import SourceError


def check_public_url(url: str) -> None:
    """Raise SourceError unless every address `url`'s host resolves to is public."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https"):
        raise SourceError(f"{url}: only http(s) URLs are accepted")
    host = parsed.hostname
    if not host:
        raise SourceError(f"{url}: no host")
    try:
        infos = socket.getaddrinfo(host, parsed.port or 80, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise SourceError(f"{url}: cannot resolve {host} ({exc.strerror})") from None
    for info in infos:
        ip = ipaddress.ip_address(info[4][0].split("%")[0])
        if (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved
                or ip.is_unspecified):
            raise SourceError(f"{url}: refused, {host} resolves to a non-public address ({ip})")
