"""HTTP calls to customer APIs: pooled clients, bounded concurrency, timeouts, retries.

Retries are for 5xx, timeouts and connection errors only (never 4xx); redirects are
never followed (a 3xx is an answer). Calls in flight are bounded by a semaphore sized to
the connection pool, and each attempt's timeout starts when it is sent, not while it waits
for a slot (httpx counts the pool wait in its timeout: under a burst, calls would time out
before they are sent). A whole attempt, response body included, is bounded by the
timeout, and a body is read only up to `max_body_bytes`.
"""

from __future__ import annotations

import asyncio
import random
import select
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpcore
import httpx

from worker.errors import Misconfigured
from worker.validators.guard import EndpointGuard

POOL_SHARD = 16
"""Connections per client: httpcore's pool bookkeeping costs O(connections²) a request
(encode/httpcore#1035); 200 connections in one pool cost ~20 ms of CPU a call (measured)."""


def new_clients(max_connections: int) -> list[httpx.AsyncClient]:
    """Clients whose pools together hold `max_connections`, each at most `POOL_SHARD`."""
    shards = -(-max_connections // POOL_SHARD)
    return [new_client(-(-max_connections // shards)) for _ in range(shards)]


def new_client(max_connections: int, verify: ssl.SSLContext | bool = True) -> httpx.AsyncClient:
    """The worker's one HTTP client: no redirects, a pool sized to the calls allowed at once;
    `verify`: certificates checked against the system's CAs, or this context's."""
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    transport = httpx.AsyncHTTPTransport(limits=limits, trust_env=False, verify=verify)
    # httpx has no parameter for it; the pool passes it to every connection it opens
    transport._pool._network_backend = _Backend()
    return httpx.AsyncClient(
        transport=transport,
        follow_redirects=False,
        # no cookie jar: a cookie one user's validation got back must never go out with
        # another user's call (httpx's client keeps and sends them by default)
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
        timeout=httpx.Timeout(5.0),
        trust_env=False,
    )


class _Backend(httpcore.AnyIOBackend):
    """httpcore's asyncio backend, its streams answering "is it readable?" from the socket.

    Twice a request httpcore asks each idle connection of the pool whether the server
    closed it; anyio answers by building its table of socket attributes anew, with a
    getpeername() system call, each time: 5.5 µs a connection, 0.7 µs this way (measured;
    6% of the worker in a profile of the slow-API bench).
    """

    async def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        return _Stream(await super().connect_tcp(*args, **kwargs))


class _Stream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        sock: socket.socket | None = inner.get_extra_info("socket")
        self._poll: Any = None  # poll, not select: select fails on descriptors over 1023
        if sock is not None:
            self._poll = select.poll()
            self._poll.register(sock, select.POLLIN)

    # the signatures are httpcore's interface
    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        return _Stream(await self._inner.start_tls(*args, **kwargs))

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # as httpcore: a connection it cannot check is not reused
            return self._poll is None or bool(self._poll.poll(0))
        return self._inner.get_extra_info(info)


@dataclass(frozen=True, slots=True)
class Answer:
    """What a call came to after its retries."""

    status: int | None
    """The last HTTP status, or None when no answer came (timeout, connection error)."""
    body: bytes | None
    """The response body when asked for and within the size bound."""
    attempts: int
    latency_ms: float
    problem: str
    """Why it is not a 2xx, in words that hold no URL or credential."""

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class Http:
    """Performs calls with the retry policy above."""

    def __init__(
        self,
        client: httpx.AsyncClient | Sequence[httpx.AsyncClient],
        *,
        retries: int,
        backoff_s: float,
        connect_timeout_s: float,
        max_concurrent: int,
        max_body_bytes: int = 64 * 1024,
        guard: EndpointGuard | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._clients = [client] if isinstance(client, httpx.AsyncClient) else list(client)
        self._in_flight = [0] * len(self._clients)
        self.client = self._clients[0]
        """For building requests (any of the clients builds the same)."""
        self._retries = retries
        self._backoff_s = backoff_s
        self._connect_timeout_s = connect_timeout_s
        self._slots = asyncio.Semaphore(max_concurrent)
        self._max_body = max_body_bytes
        self._guard = guard
        self._clock = clock
        self._sleep = sleep

    async def call(
        self,
        build: Callable[[], Awaitable[httpx.Request]],
        timeout_s: float,
        *,
        read_body: bool = False,
        what: str = "Authorization API",
    ) -> Answer:
        """Send what `build` makes (built anew for each attempt); never raises."""
        started = self._clock()
        attempts = 0
        while True:
            attempts += 1
            status, body, problem = await self._attempt(build, timeout_s, read_body, what)
            retriable = status is None or status >= 500
            if not retriable or attempts > self._retries:
                if retriable and attempts > 1:
                    problem = f"{problem} (after {attempts} attempts)"
                latency = round((self._clock() - started) * 1000, 1)
                return Answer(status, body, attempts, latency, problem)
            await self._sleep(self._backoff_s * 2 ** (attempts - 1) * (0.5 + random.random() / 2))

    async def _attempt(
        self,
        build: Callable[[], Awaitable[httpx.Request]],
        timeout_s: float,
        read_body: bool,
        what: str,
    ) -> tuple[int | None, bytes | None, str]:
        try:
            request = await build()
        except (UnicodeEncodeError, ValueError, TypeError) as exc:
            # e.g. a secret or header template httpx cannot encode; never the value itself
            raise Misconfigured(
                f"{what} request cannot be built ({exc.__class__.__name__})"
            ) from None
        if self._guard is not None:
            await self._guard.check(request.url)  # Misconfigured: nothing is sent
        timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, self._connect_timeout_s))
        request.extensions["timeout"] = timeout.as_dict()
        async with self._slots:
            # the least busy pool: none holds more calls than connections (the slots bound all)
            shard = min(range(len(self._clients)), key=self._in_flight.__getitem__)
            self._in_flight[shard] += 1
            try:
                async with asyncio.timeout(timeout_s):
                    response = await self._clients[shard].send(request, stream=True)
                    try:
                        # read even an unwanted body (bounded): unread, it keeps the
                        # connection from going back to the pool (a new one every call)
                        body = await self._read(response, keep=read_body)
                    finally:
                        await response.aclose()
            except (TimeoutError, httpx.TimeoutException):
                return None, None, f"{what} timed out after {timeout_s:g} s"
            except _TooLarge:
                return None, None, f"{what} answer is larger than {self._max_body} bytes"
            except Exception as exc:  # noqa: BLE001 - any failure of the call is "no answer"
                # the message of an httpx error may hold the URL (and query credentials)
                return None, None, f"{what} connection failed ({exc.__class__.__name__})"
            finally:
                self._in_flight[shard] -= 1
        status = response.status_code
        if 300 <= status < 400:
            return status, body, f"{what} answered {status}; redirects are not followed"
        return status, body, f"{what} answered {status}"

    async def _read(self, response: httpx.Response, *, keep: bool) -> bytes | None:
        """The body up to the size bound (too large: `_TooLarge` if kept, else dropped)."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self._max_body:
                if keep:
                    raise _TooLarge
                return None  # the connection is closed, not reused
            if keep:
                chunks.append(chunk)
        return b"".join(chunks) if keep else None


class _TooLarge(Exception):
    pass
