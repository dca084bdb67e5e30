"""worker/kafka.py helpers: the output partitioner and client start."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.partitioner import murmur2

from worker.kafka import partition_for, start


def test_partition_for_is_kafkas_default_partitioner_and_remembered() -> None:
    partition_for.cache_clear()
    for key in (b"s1", b"acme/bot/session-42", b"\xff\x00", b"x" * 300):
        assert partition_for(key, 8) == (murmur2(key) & 0x7FFFFFFF) % 8
    partition_for(b"s1", 8)  # a session sends many records: hashed once
    assert partition_for.cache_info().hits >= 1


class _Client:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.started = self.stopped = 0

    async def start(self) -> None:
        self.started += 1
        if self.fail:
            raise OSError("unreachable")

    async def stop(self) -> None:
        self.stopped += 1


def test_start_starts_a_client_each_time_and_stops_one_that_fails() -> None:
    client = _Client()
    asyncio.run(start(client))
    asyncio.run(start(client))  # a coroutine each call (it was once memoized by mistake)
    assert (client.started, client.stopped) == (2, 0)
    failing = _Client(fail=True)
    with pytest.raises(OSError):
        asyncio.run(start(failing))
    assert failing.stopped == 1
