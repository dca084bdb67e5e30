"""An Authorization API that misbehaves at the socket: the worker's real HTTP client
(`new_transport`: no redirects, bounded bodies, per-attempt timeouts) against a raw TCP
server on loopback. Every fault ends as an outcome; none raises, none hangs."""

from __future__ import annotations

import asyncio
import gzip
import socket
import struct
import time
from collections.abc import AsyncIterator

import pytest

from tests.unit.test_baas import prepare
from worker.config import parse_connector
from worker.validators.auth import ConnectorAuth
from worker.validators.baas import BaasValidator
from worker.validators.calls import ConnectorCalls
from worker.validators.circuit import CircuitBreaker
from worker.validators.http import Http, new_transport
from worker.vault import Vault


class RawApi:
    """Answers by path: /ok, /spike, /reset, /hang, /huge, /denied-huge, /gzip, /bomb,
    /badjson, /redirect."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.writers: set[asyncio.StreamWriter] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.writers.add(writer)
        head = await reader.readuntil(b"\r\n\r\n")
        path = head.split(b" ")[1].decode()
        self.paths.append(path)
        length = int(
            next(
                (
                    line.split(b":")[1]
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                ),
                b"0",
            )
        )
        await reader.readexactly(length)
        if path == "/reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        if path == "/hang":  # headers, part of the body, then nothing
            writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{"user":')
            await writer.drain()
            await asyncio.sleep(30)
            return
        if path in ("/huge", "/denied-huge"):  # 50 MB, streamed
            status = b"200 OK" if path == "/huge" else b"403 Forbidden"
            writer.write(b"HTTP/1.1 %s\r\nContent-Length: 52428800\r\n\r\n" % status)
            try:
                for _ in range(800):
                    writer.write(b"x" * 65536)
                    await writer.drain()
            except ConnectionError:
                pass
            return
        if path == "/redirect":
            port = writer.get_extra_info("sockname")[1]
            location = f"Location: http://127.0.0.1:{port}/ok\r\n"
            writer.write(f"HTTP/1.1 302 Found\r\n{location}Content-Length: 0\r\n\r\n".encode())
        elif path in ("/gzip", "/bomb"):  # compressed: 15 bytes, or 50 MB of spaces
            body = gzip.compress(b'{"user": "ann"}' if path == "/gzip" else b" " * 52428800)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body)
            )
        elif path == "/badjson":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{not json")
        else:
            if path == "/spike":
                await asyncio.sleep(0.3)
            body = b'{"user": "ann"}'
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()


@pytest.fixture
async def api() -> AsyncIterator[tuple[RawApi, int]]:
    raw = RawApi()
    server = await asyncio.start_server(raw.handle, "127.0.0.1", 0)
    try:
        yield raw, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await raw.close()
        await server.wait_closed()


async def call(port: int, path: str, retries: int = 1) -> tuple[str, str, str | None, float]:
    con = parse_connector(
        {
            "Alias": "A",
            "Organization": "acme",
            "Method": "POST",
            "Endpoint": f"http://127.0.0.1:{port}{path}",
            "TimeoutSeconds": 1,
            "RequestMapping": {
                "t": {"type": "requestBody", "requestBodyPath": "$.t", "inputPath": "$.t"}
            },
            "ResponseMapping": {"identity": "$.user"},  # the body is read
        },
        "test",
    )
    transport = new_transport(10)
    vault = Vault(None, {})
    http = Http(transport, retries=retries, backoff_s=0.01, connect_timeout_s=1, max_concurrent=10)
    v = BaasValidator(
        ConnectorCalls(http, ConnectorAuth(http, vault), CircuitBreaker(100, 1)), vault
    )
    started = time.monotonic()
    try:
        result, report = await v.validate(prepare(v, con, {"t": "tok"}))
    finally:
        await transport.aclose()
    return result.outcome, result.detail, result.identity, time.monotonic() - started


async def test_a_latency_spike_within_the_timeout_is_an_answer(api: tuple[RawApi, int]) -> None:
    outcome, _, identity, took = await call(api[1], "/spike")
    assert (outcome, identity) == ("allowed", "ann") and took >= 0.3


async def test_connection_reset_is_retried_then_unavailable(api: tuple[RawApi, int]) -> None:
    raw, port = api
    outcome, detail, _, _ = await call(port, "/reset", retries=2)
    assert outcome == "unavailable" and "connection failed" in detail
    assert raw.paths == ["/reset"] * 3


async def test_a_response_that_never_ends_times_out(api: tuple[RawApi, int]) -> None:
    outcome, detail, _, took = await call(api[1], "/hang", retries=0)
    assert outcome == "unavailable" and "timed out after 1 s" in detail
    assert took < 2.5


async def test_a_huge_body_is_cut_at_the_bound(api: tuple[RawApi, int]) -> None:
    outcome, detail, _, took = await call(api[1], "/huge", retries=0)
    assert outcome == "unavailable" and "larger than 65536 bytes" in detail
    assert took < 1


async def test_a_denial_with_a_huge_body_is_a_denial(api: tuple[RawApi, int]) -> None:
    outcome, detail, _, took = await call(api[1], "/denied-huge", retries=0)
    assert (outcome, detail) == ("denied", "Authorization API answered 403")
    assert took < 1  # decided without reading it all


async def test_a_compressed_answer_is_read_decompressed(api: tuple[RawApi, int]) -> None:
    assert (await call(api[1], "/gzip"))[:3] == ("allowed", "", "ann")


async def test_a_compressed_body_is_bounded_by_its_decompressed_size(
    api: tuple[RawApi, int],
) -> None:
    outcome, detail, _, took = await call(api[1], "/bomb", retries=0)
    assert outcome == "unavailable" and "larger than 65536 bytes" in detail
    assert took < 1


async def test_invalid_json_is_an_answer_without_identity(api: tuple[RawApi, int]) -> None:
    assert (await call(api[1], "/badjson"))[:3] == ("allowed", "", None)


async def test_a_redirect_is_not_followed(api: tuple[RawApi, int]) -> None:
    raw, port = api
    outcome, detail, _, _ = await call(port, "/redirect")
    assert outcome == "unavailable" and "redirects are not followed" in detail
    assert raw.paths == ["/redirect"]  # neither followed nor retried
