"""Decisions to Kafka in batches: one aiokafka batch per topic partition and loop turn.

aiokafka's `send()` costs, for every record, a metadata lookup, a future, and a callback
when the broker answers: a third of the worker's time on the cached path (bench/, py-spy).
Here a record goes into the open `BatchBuilder` of its topic partition. At the end of the
event-loop turn in which it came, a partition with no batch on its way hands its builder
to the producer (`send_batch`: one future per batch); a partition whose last batch is still
on its way keeps filling the open one and hands it over when that batch is delivered (as
aiokafka does with `send()`). So at low rates a decision leaves in the turn it was made,
and under load batches fill by themselves.

At least once: a record may be acked once it is `add`ed. Faust flushes the producer before
every commit, and its producer (worker/faust_tuning.py) first awaits `flush()` here, which
hands over the open builders, waits for every batch to be delivered, and raises if one was
not, so that commit fails instead of passing records that were never written.

A record may come with the time its inbound message came in (`since`); once its batch is
delivered, `on_delivered` gets those times and when the batch was handed to the producer
(the worker's decision-time histograms: to the hand-over, its own share; to the delivery,
the broker's answer included).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer

TP = tuple[str, int]


@dataclass(slots=True, eq=False)
class _Batch:
    builder: Any  # aiokafka BatchBuilder
    since: list[float] = field(default_factory=list)  # of the records that came with one


class Outbox:
    """Batches records per topic partition; see the module docstring."""

    def __init__(
        self,
        producer: Callable[[], AIOKafkaProducer],
        on_failure: Callable[[BaseException], None],
        *,
        on_delivered: Callable[[list[float], float], None] = lambda _since, _handed: None,
        max_queued: int = 64,
    ) -> None:
        self._producer = producer
        self._on_failure = on_failure
        self._on_delivered = on_delivered
        self._max_queued = max_queued
        self._open: dict[TP, _Batch] = {}  # still taking records
        self._queued: dict[TP, deque[_Batch]] = {}  # closed, in order, not yet handed over
        self._senders: dict[TP, asyncio.Task[None]] = {}
        self._closed: dict[TP, int] = {}  # batches closed, by topic partition
        self._sent: dict[TP, int] = {}  # batches delivered
        self._progress = asyncio.Event()  # set when one is
        self._n_queued = 0
        self._room = asyncio.Event()
        self._room.set()
        self._turn_scheduled = False
        self._failure: BaseException | None = None
        self._round_robin = itertools.count()

    def add(
        self,
        topic: str,
        partition: int | None,
        partitions: int,
        key: bytes | None,
        value: bytes,
        headers: Sequence[tuple[str, bytes]] | None,
        since: float | None = None,
    ) -> None:
        """Queue a record (in call order per topic partition); never waits."""
        if partition is None:
            partition = next(self._round_robin) % partitions
        tp = (topic, partition)
        if not isinstance(headers, list):  # aiokafka's builder takes lists only
            headers = list(headers or ())
        batch = self._open.get(tp)
        if (
            batch is None
            or batch.builder.append(timestamp=None, key=key, value=value, headers=headers) is None
        ):
            if batch is not None:  # full (append closed it): next in line
                self._enqueue(tp, batch)
            batch = self._open[tp] = _Batch(self._producer().create_batch())
            # an empty batch takes any record (the pipeline keeps records under 1 MB)
            batch.builder.append(timestamp=None, key=key, value=value, headers=headers)
        if since is not None:
            batch.since.append(since)
        if not self._turn_scheduled:
            self._turn_scheduled = True
            asyncio.get_running_loop().call_soon(self._end_of_turn)

    @property
    def full(self) -> bool:
        """Too many closed batches wait: the caller should `await room()`."""
        return self._n_queued >= self._max_queued

    async def room(self) -> None:
        await self._room.wait()

    async def flush(self) -> None:
        """Wait until every record added so far is delivered (not the ones added meanwhile:
        under steady load that would never end); raise if one could not be."""
        for tp, batch in self._open.items():
            batch.builder.close()
            self._enqueue(tp, batch)
        self._open.clear()
        target = dict(self._closed)
        self._end_of_turn()
        while self._failure is None and any(self._sent[tp] < n for tp, n in target.items()):
            self._progress.clear()
            await self._progress.wait()
        if self._failure is not None:
            raise self._failure

    def _enqueue(self, tp: TP, batch: _Batch) -> None:
        queue = self._queued.get(tp)
        if queue is None:
            queue = self._queued[tp] = deque()
            self._closed[tp] = self._sent[tp] = 0
        queue.append(batch)
        self._closed[tp] += 1
        self._n_queued += 1
        if self._n_queued >= self._max_queued:
            self._room.clear()

    def _end_of_turn(self) -> None:
        self._turn_scheduled = False
        for tp in itertools.chain(self._open, (tp for tp, q in self._queued.items() if q)):
            if tp not in self._senders:
                self._senders[tp] = asyncio.create_task(self._send(tp))

    async def _send(self, tp: TP) -> None:
        """Hand `tp`'s batches to the producer in order, the next once the last is delivered
        (as aiokafka does with `send()`): meanwhile the open batch fills."""
        producer = self._producer()
        try:
            while self._failure is None:
                if tp in self._open and not self._queued.get(tp):
                    self._enqueue(tp, self._open.pop(tp))
                queue = self._queued.get(tp)
                if not queue:
                    return
                batch = queue.popleft()
                batch.builder.close()
                self._n_queued -= 1
                if self._n_queued < self._max_queued:
                    self._room.set()
                handed = time.monotonic()
                delivered = await producer.send_batch(batch.builder, tp[0], partition=tp[1])
                await delivered
                self._sent[tp] += 1
                self._progress.set()
                if batch.since:
                    self._on_delivered(batch.since, handed)
        except Exception as exc:  # noqa: BLE001 - not written: the worker must stop
            self._fail(exc)
        finally:
            del self._senders[tp]

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
            self._room.set()  # nothing waits forever: the worker stops, no commit passes
            self._progress.set()
            self._on_failure(exc)
