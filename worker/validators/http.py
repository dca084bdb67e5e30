"""HTTP calls to customer APIs: one connection pool, bounded concurrency, timeouts, retries.

Retries are for 5xx, timeouts and connection errors only (never 4xx); redirects are
never followed (a 3xx is an answer). Calls in flight are bounded by a semaphore sized to
the connection pool, and each attempt's timeout starts when it is sent, not while it waits
for a slot (under a burst, calls would otherwise time out before they are sent). A whole
attempt, response body included, is bounded by the timeout, and a body is read only up
to `max_body_bytes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass

import aiohttp
import httpx
import yarl

from worker import __version__
from worker.errors import Misconfigured
from worker.validators.guard import EndpointGuard, GuardedResolver


def new_transport(
    max_connections: int, verify: ssl.SSLContext | bool = True, *, public_only: bool = False
) -> Transport:
    """What sends the worker's requests (`httpx.Request`, built by the validators): aiohttp,
    a pool sized to the calls allowed at once, no redirects followed, no cookies kept, no
    proxy from the environment; `verify`: certificates checked against the system's CAs
    (httpx's), or this context's; `public_only`: connections only to public addresses,
    checked at connection time (guard.GuardedResolver: no DNS rebinding).

    There is no httpx client in between: its layers (auth, redirects, a cookie jar: a
    cookie one user's validation got back must never go out with another user's call)
    are what the worker does not want, and they cost a quarter of a call's CPU.
    """
    tls = httpx.create_ssl_context(verify, trust_env=False)
    return Transport(max_connections, tls, public_only=public_only)


_FAULTS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpx.ReadError),
    (aiohttp.ClientError, httpx.NetworkError),
)
"""aiohttp's errors as httpx's (first match), so that problems name httpx's classes."""


@contextlib.contextmanager
def _as_httpx() -> Iterator[None]:
    try:
        yield
    except aiohttp.ClientError as exc:
        fault = next(h for a, h in _FAULTS if isinstance(exc, a))
        raise fault(exc.__class__.__name__) from None  # aiohttp's message holds the URL


class Transport:
    """httpx requests sent by aiohttp's client (installed already: Faust's web server), and
    the answer read by aiohttp too, as a status and a bounded body (`exchange`).

    httpx's own transport (httpcore on anyio) costs 0.84 ms of CPU a call in pools of 16
    connections, more in larger ones, as its bookkeeping grows with the square of its
    connections (encode/httpcore#1035: 3.3 ms with 200); through aiohttp 0.24-0.26 ms with
    200 (`BENCH_ONLY=calls`, docs/performance.md). Requests are still built by httpx (the
    connectors' mappings, auth and tests use its API); answers are not made into httpx
    responses (their streams and decoders cost a fifth of a call's CPU).
    """

    def __init__(self, max_connections: int, tls: ssl.SSLContext, *, public_only: bool) -> None:
        self._max_connections = max_connections
        self._tls = tls
        self._public_only = public_only
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        """Made on the first call, in the running event loop (aiohttp wants one)."""
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=self._max_connections,
                ssl=self._tls,
                keepalive_timeout=5,  # idle connections kept 5 s, as httpx's pool did
                resolver=GuardedResolver() if self._public_only else None,
            ),
            cookie_jar=aiohttp.DummyCookieJar(),  # never kept (see new_transport)
            # a connector's own User-Agent header, if it has one, wins over this default
            headers={"User-Agent": f"secure-session/{__version__}"},
            trust_env=False,  # no proxy or .netrc from the environment
        )

    async def exchange(
        self, request: httpx.Request, waits: httpx.Timeout, max_body: int, keep: bool
    ) -> tuple[int, bytes | None]:
        """Send `request`; the answer's status, and its body as `_bounded` reads it
        (decompressed by aiohttp, which asks for gzip and deflate). `waits`: the socket's
        connect and read timeouts (the caller bounds the whole attempt)."""
        session = self._session
        if session is None:
            session = self._session = self._open()
        with _as_httpx():
            response = await session.request(
                request.method,
                yarl.URL(str(request.url), encoded=True),  # as httpx encoded it
                headers=request.headers.multi_items(),
                data=request.content or None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(sock_connect=waits.connect, sock_read=waits.read),
            )
            try:
                status = response.status
                return status, await _bounded(response.content.iter_any(), status, max_body, keep)
            finally:
                # read to its end, the connection goes back to the pool; else it is closed
                response.release()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class _ViaHttpx:
    """Any httpx transport behind the same `exchange` (the tests' `httpx.MockTransport`,
    httpx's own transport in the benchmark)."""

    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        self._transport = transport

    async def exchange(
        self, request: httpx.Request, waits: httpx.Timeout, max_body: int, keep: bool
    ) -> tuple[int, bytes | None]:
        request.extensions["timeout"] = waits.as_dict()
        response = await self._transport.handle_async_request(request)
        try:
            status = response.status_code
            return status, await _bounded(response.aiter_bytes(), status, max_body, keep)
        finally:
            await response.aclose()


async def _bounded(
    chunks: AsyncIterator[bytes], status: int, max_body: int, keep: bool
) -> bytes | None:
    """The body when `keep`, else None; read to its end even when unwanted (unread, it keeps
    the connection from going back to the pool: a new one every call). Larger than
    `max_body`: `_TooLarge` if kept, else None, and the connection is not reused."""
    kept: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > max_body:
            if keep:
                raise _TooLarge(status)
            return None
        if keep:
            kept.append(chunk)
    return b"".join(kept) if keep else None


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
        transport: Transport | httpx.AsyncBaseTransport,
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
        self._exchange = (
            transport.exchange
            if isinstance(transport, Transport)
            else _ViaHttpx(transport).exchange
        )
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
        except (UnicodeEncodeError, ValueError, TypeError, httpx.InvalidURL) as exc:
            # e.g. a secret or header template httpx cannot encode; never the value itself
            raise Misconfigured(
                f"{what} request cannot be built ({exc.__class__.__name__})"
            ) from None
        for name, value in request.headers.items():
            if not _sendable_header(value):
                # a secret (or a token endpoint's answer) with a line break, NUL or other
                # control character: nothing is sent, and the value is never shown
                raise Misconfigured(
                    f"{what} request header {name} holds a character that cannot be sent "
                    "(a line break, NUL or other control character): not sent"
                )
        if self._guard is not None:
            await self._guard.check(request.url)  # Misconfigured: nothing is sent
        timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, self._connect_timeout_s))
        try:
            async with self._slots, asyncio.timeout(timeout_s):
                status, body = await self._exchange(request, timeout, self._max_body, read_body)
        except (TimeoutError, httpx.TimeoutException):
            return None, None, f"{what} timed out after {timeout_s:g} s"
        except _TooLarge as too_large:
            if 400 <= too_large.status < 500:
                # a 4xx is a denial whatever its body: decided without reading it all
                return too_large.status, None, f"{what} answered {too_large.status}"
            return None, None, f"{what} answer is larger than {self._max_body} bytes"
        except (httpx.TransportError, OSError) as exc:  # the network's failures only:
            # anything else is an internal error and blocks (never "no answer", which a
            # fail-open bot would allow); an httpx error's message may hold the URL
            return None, None, f"{what} connection failed ({exc.__class__.__name__})"
        if 300 <= status < 400:
            return status, body, f"{what} answered {status}; redirects are not followed"
        return status, body, f"{what} answered {status}"


def _sendable_header(value: str) -> bool:
    """Printable ASCII (what an HTTP header value may hold; a tab too)."""
    return value.isascii() and value.replace("\t", " ").isprintable()


class _TooLarge(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status
