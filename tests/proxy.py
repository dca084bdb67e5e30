"""A TCP proxy that can take a broker away: `down()` resets every connection and refuses
new ones (as a crashed or unreachable broker does), `up()` listens again on the same port."""

from __future__ import annotations

import asyncio
import contextlib
import threading

from worker.demo.broker import free_port


class TcpProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.BaseTransport] = set()
        self.connections = 0

    def start(self) -> TcpProxy:
        self._thread.start()
        return self

    def up(self) -> None:
        asyncio.run_coroutine_threadsafe(self._up(), self._loop).result(5)

    def down(self) -> None:
        asyncio.run_coroutine_threadsafe(self._down(), self._loop).result(5)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.down()
            # let the aborted transports close their sockets before the loop stops
            asyncio.run_coroutine_threadsafe(asyncio.sleep(0.2), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _up(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _down(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for transport in list(self._transports):
            transport.abort()  # RST: the clients see the connection die at once
        self._transports.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._transports.add(writer.transport)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._transports.add(up_writer.transport)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()
            self._transports.discard(writer.transport)
