"""Which endpoints the worker may call: https only, no private networks, an allow-list.

By default a connector (and its token URL) must use https and must not point at a
loopback, private, link-local or otherwise non-public address: a connector record on a
topic must not turn the worker into a proxy into its own network (SSRF).
`SECURE_SESSION_ALLOW_INSECURE_ENDPOINTS=1` lifts both rules, for local testing.
`SECURE_SESSION_ENDPOINT_ALLOWLIST` (comma-separated `scheme://host[:port]`, a host may
start with `*.`) limits calls to the endpoints listed. A refused endpoint makes the
validation `misconfigured`; nothing is sent.

Host names are resolved before the call and every address they resolve to is checked;
a name that does not resolve is refused. An IPv6 address that embeds an IPv4 one (mapped,
IPv4-compatible, 6to4, NAT64, Teredo) is checked as that IPv4 address too. The HTTP
client's own resolver (`GuardedResolver`) checks again the addresses it is about to connect
to, so a name that resolves differently between the check and the connection (DNS
rebinding) never reaches a non-public address: that connection fails (`unavailable`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

import aiohttp
import aiohttp.abc
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

    @property
    def public_only(self) -> bool:
        """Whether connections must go to public addresses only."""
        return not self._insecure

    async def check(self, url: httpx.URL) -> None:
        """Misconfigured (naming the endpoint, never its query) when `url` may not be called."""
        scheme, host = url.scheme, (url.host or "").lower().rstrip(".")
        port = url.port or DEFAULT_PORTS.get(scheme, 0)
        where = f"{scheme}://{host}:{port}"
        if not host:
            raise Misconfigured(f"endpoint {url.scheme}:// has no host")
        if self._allowlist and not any(a.matches(scheme, host, port) for a in self._allowlist):
            raise Misconfigured(f"endpoint {where} is not in SECURE_SESSION_ENDPOINT_ALLOWLIST")
        if self._insecure:
            return
        if scheme != "https":
            raise Misconfigured(f"endpoint {where} is not https")
        addresses = await _addresses(host, port)
        if not addresses:
            raise Misconfigured(f"endpoint {where} does not resolve")
        for address in addresses:
            if not is_public(address):
                raise Misconfigured(f"endpoint {where} is a non-public address ({address})")


Address = ipaddress.IPv4Address | ipaddress.IPv6Address
NAT64 = ipaddress.ip_network("64:ff9b::/96")


def is_public(address: Address) -> bool:
    """Global, and so is every IPv4 address it embeds."""
    if not address.is_global and not (address.version == 6 and _embedded(address)):
        return False
    if address.version == 6:
        embedded = _embedded(address)
        if embedded and not all(v4.is_global for v4 in embedded):
            return False
    return True


def _embedded(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    found = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    if address in NAT64 or (int(address) >> 32 == 0 and int(address) > 0xFFFF):
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))  # NAT64, ::a.b.c.d
    return found


async def _addresses(host: str, port: int) -> list[Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    if host == "localhost" or host.endswith(".localhost"):
        return [ipaddress.ip_address("127.0.0.1")]
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return []
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


class GuardedResolver(aiohttp.abc.AbstractResolver):
    """aiohttp's resolver, keeping only public addresses: what is connected to is what was
    checked (an endpoint re-resolved to a private address after the guard's check, DNS
    rebinding, finds nothing to connect to)."""

    def __init__(self) -> None:
        self._resolver = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        results = await self._resolver.resolve(host, port, family)
        public = [
            r for r in results if is_public(ipaddress.ip_address(str(r["host"]).split("%")[0]))
        ]
        if not public:
            raise OSError(f"{host} resolves to no public address")
        return public

    async def close(self) -> None:
        await self._resolver.close()
