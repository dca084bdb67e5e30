"""The worker's HTTP client (httpx requests sent by aiohttp) on the wire: requests as
httpx built them, connections reused and bounded, TLS verified, no cookies kept."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from worker import __version__
from worker.validators.http import Answer, Http, new_transport


class KeepAliveApi:
    """HTTP/1.1 with keep-alive: answers every request on a connection with a small body."""

    def __init__(self, close_after_answer: bool = False) -> None:
        self.close_after_answer = close_after_answer
        """Hang up after each answer, as a server whose keep-alive ran out."""
        self.connections = 0
        self.heads: list[bytes] = []
        self.bodies: list[bytes] = []
        self.cookies_back: list[bytes] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    0,
                )
                self.heads.append(head)
                self.bodies.append(await reader.readexactly(length))
                self.cookies_back += [
                    line for line in head.split(b"\r\n") if line.lower().startswith(b"cookie")
                ]
                self.in_flight += 1
                self.most_in_flight = max(self.most_in_flight, self.in_flight)
                await asyncio.sleep(0.01)
                self.in_flight -= 1
                body = b'{"user": "ann", "padding": "' + b"x" * 500 + b'"}'
                cookie = b"Set-Cookie: session=user-a; Path=/\r\n"
                writer.write(
                    b"HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n%s" % (cookie, len(body), body)
                )
                await writer.drain()
                if self.close_after_answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def api(request: pytest.FixtureRequest) -> AsyncIterator[tuple[KeepAliveApi, str]]:
    raw = KeepAliveApi(close_after_answer=getattr(request, "param", False))
    server = await asyncio.start_server(raw.handle, "127.0.0.1", 0)
    try:
        yield raw, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/check"
    finally:
        server.close()


@pytest.fixture
async def tls_api(pki: Path) -> AsyncIterator[tuple[KeepAliveApi, str, ssl.SSLContext]]:
    """The same API over TLS, and a client context that trusts its certificate."""
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(pki / "cert.pem", pki / "key.pem")
    raw = KeepAliveApi()
    server = await asyncio.start_server(raw.handle, "127.0.0.1", 0, ssl=server_side)
    try:
        port = server.sockets[0].getsockname()[1]
        yield (
            raw,
            f"https://localhost:{port}/check",
            ssl.create_default_context(cafile=pki / "cert.pem"),
        )
    finally:
        server.close()


Call = Callable[..., Awaitable[Answer]]


@contextlib.asynccontextmanager
async def calling(
    url: str,
    transport: httpx.AsyncBaseTransport,
    max_concurrent: int,
    headers: dict[str, str] | None = None,
) -> AsyncIterator[Call]:
    """`Http.call` through `transport`, the same small POST to `url` each time (keyword
    arguments go to `call`); the transport is closed afterwards."""
    http = Http(
        transport, retries=0, backoff_s=0, connect_timeout_s=1, max_concurrent=max_concurrent
    )

    async def build() -> httpx.Request:
        return httpx.Request("POST", url, json={"t": "x"}, headers=headers or {"X-Api-Key": "k"})

    def call(timeout_s: float = 1, **kwargs: Any) -> Awaitable[Answer]:
        return http.call(build, timeout_s, **kwargs)

    try:
        yield call
    finally:
        await transport.aclose()


async def test_a_request_goes_out_as_httpx_built_it(api: tuple[KeepAliveApi, str]) -> None:
    raw, url = api
    async with calling(url + "?q=a%20b&s=%2F", new_transport(1), 1) as call:
        assert (await call()).status == 200
    lines = raw.heads[0].split(b"\r\n")
    assert lines[0] == b"POST /check?q=a%20b&s=%2F HTTP/1.1"  # the path not re-encoded
    headers = [line.lower() for line in lines[1:] if line]
    assert b"x-api-key: k" in headers
    assert b"content-type: application/json" in headers
    assert b"user-agent: secure-session/" + __version__.encode() in headers
    assert [h for h in headers if h.startswith(b"content-length")] == [b"content-length: 9"]
    assert raw.bodies == [b'{"t":"x"}']


async def test_a_connector_user_agent_wins_over_the_default(api: tuple[KeepAliveApi, str]) -> None:
    raw, url = api
    async with calling(url, new_transport(1), 1, headers={"User-Agent": "acme-bot/1"}) as call:
        assert (await call()).status == 200
    headers = [line.lower() for line in raw.heads[0].split(b"\r\n")[1:] if line]
    assert [h for h in headers if h.startswith(b"user-agent")] == [b"user-agent: acme-bot/1"]


async def test_a_connection_is_reused_whether_or_not_the_body_is_wanted(
    api: tuple[KeepAliveApi, str],
) -> None:
    raw, url = api
    async with calling(url, new_transport(4), 4) as call:
        for n in range(20):
            answer = await call(read_body=n % 2 == 0)
            assert answer.status == 200
            assert (answer.body is not None) == (n % 2 == 0)
    assert raw.connections == 1  # an unread body used to cost a new connection a call
    assert raw.cookies_back == []  # one call's cookie never goes out with the next


async def test_calls_in_flight_and_connections_stay_within_the_bound(
    api: tuple[KeepAliveApi, str],
) -> None:
    raw, url = api
    async with calling(url, new_transport(40), 40) as call:
        answers = await asyncio.gather(*[call(2) for _ in range(200)])
    assert all(a.status == 200 for a in answers)
    assert raw.most_in_flight <= 40
    assert raw.connections <= 40  # the pool opens no more than it holds


@pytest.mark.parametrize("api", [True], indirect=True)
async def test_a_connection_the_server_closed_is_not_reused(
    api: tuple[KeepAliveApi, str],
) -> None:
    """A connection the server hung up on leaves the pool; reused, it would fail the call."""
    raw, url = api
    async with calling(url, new_transport(1), 1) as call:
        for _ in range(3):
            answer = await call()
            assert answer.status == 200, answer.problem
            await asyncio.sleep(0.05)  # the server's close reaches the idle connection
    assert raw.connections == 3


async def test_tls_connections_are_verified_and_reused(
    tls_api: tuple[KeepAliveApi, str, ssl.SSLContext],
) -> None:
    raw, url, trusting = tls_api
    async with (
        calling(url, new_transport(2, verify=trusting), 2) as call,
        calling(url, new_transport(2), 2) as call_with_system_cas,
    ):
        for _ in range(5):
            answer = await call()
            assert answer.status == 200, answer.problem
        refused = await call_with_system_cas()
    assert raw.connections == 1
    assert refused.status is None
    assert refused.problem == "Authorization API connection failed (ConnectError)"
