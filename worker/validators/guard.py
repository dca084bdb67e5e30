"""Which endpoints the worker may call: https only, no private networks, an allow-list.

By default a connector (and its token URL) must use https and must not point at a
loopback, private, link-local or otherwise non-public address: a connector record on a
topic must not turn the worker into a proxy into its own network (SSRF).
`SECURE_SESSION_ALLOW_INSECURE_ENDPOINTS=1` lifts both rules, for local testing.
`SECURE_SESSION_ENDPOINT_ALLOWLIST` (comma-separated `scheme://host[:port]`, a host may
start with `*.`) limits calls to the endpoints listed. A refused endpoint makes the
validation `misconfigured`; nothing is sent.

Host names are resolved before the call and every address they resolve to is checked.
(A name that resolves differently between that check and the connection is not caught:
use the allow-list for hosts you do not control.)
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

import httpx

from worker.errors import Misconfigured

DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class Allowed:
    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, entry: str) -> Allowed:
        url = httpx.URL(entry.strip())
        if url.scheme not in DEFAULT_PORTS or not url.host:
            raise ValueError(f"{entry!r} is not scheme://host[:port]")
        return cls(url.scheme, url.host.lower(), url.port or DEFAULT_PORTS[url.scheme])

    def matches(self, scheme: str, host: str, port: int) -> bool:
        if (scheme, port) != (self.scheme, self.port):
            return False
        if self.host.startswith("*."):
            return host.endswith(self.host[1:])
        return host == self.host


class EndpointGuard:
    def __init__(self, *, allow_insecure: bool, allowlist: tuple[Allowed, ...] = ()) -> None:
        self._insecure = allow_insecure
        self._allowlist = allowlist

    async def check(self, url: httpx.URL) -> None:
        """Misconfigured (naming the endpoint, never its query) when `url` may not be called."""
        scheme, host = url.scheme, (url.host or "").lower()
        port = url.port or DEFAULT_PORTS.get(scheme, 0)
        where = f"{scheme}://{host}:{port}"
        if self._allowlist and not any(a.matches(scheme, host, port) for a in self._allowlist):
            raise Misconfigured(f"endpoint {where} is not in SECURE_SESSION_ENDPOINT_ALLOWLIST")
        if self._insecure:
            return
        if scheme != "https":
            raise Misconfigured(f"endpoint {where} is not https")
        for address in await _addresses(host, port):
            if not address.is_global:
                raise Misconfigured(f"endpoint {where} is a non-public address ({address})")


async def _addresses(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    if host == "localhost" or host.endswith(".localhost"):
        return [ipaddress.ip_address("127.0.0.1")]
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return []  # unresolvable: the call fails as a connection error (unavailable)
    return [ipaddress.ip_address(info[4][0]) for info in infos]
