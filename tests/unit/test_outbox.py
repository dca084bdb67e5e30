"""The outbox: batches per topic partition, in order, flush waits for delivery, failures stop."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatch

from worker.outbox import Outbox


class FakeProducer:
    """aiokafka's batch API: delivers each batch after `delay_s`, or fails it."""

    def __init__(self, batch_size: int = 16384, delay_s: float = 0.01) -> None:
        self.batch_size = batch_size
        self.delay_s = delay_s
        self.sent: list[tuple[str, int, list[bytes]]] = []
        self.delivered = 0
        self.fail: BaseException | None = None

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(self.batch_size, 0)

    async def send_batch(self, batch: BatchBuilder, topic: str, *, partition: int) -> Any:
        values = [r.value for r in DefaultRecordBatch(batch._build())]
        self.sent.append((topic, partition, values))
        delivered = asyncio.get_running_loop().create_future()

        def deliver() -> None:
            if self.fail is not None:
                delivered.set_exception(self.fail)
            else:
                self.delivered += 1
                delivered.set_result(None)

        asyncio.get_running_loop().call_later(self.delay_s, deliver)
        return delivered


def values(producer: FakeProducer, topic: str, partition: int) -> list[bytes]:
    return [v for t, p, vs in producer.sent if (t, p) == (topic, partition) for v in vs]


async def test_records_of_a_turn_go_in_one_batch_per_partition_in_order() -> None:
    producer, failures = FakeProducer(), []
    outbox = Outbox(lambda: producer, failures.append)  # type: ignore[arg-type,return-value]
    for n in range(10):
        outbox.add("allowed", n % 2, 2, b"k", b"%d" % n, [("h", b"v")])
    await outbox.flush()
    assert len(producer.sent) == 2 and producer.delivered == 2
    assert values(producer, "allowed", 0) == [b"0", b"2", b"4", b"6", b"8"]
    assert values(producer, "allowed", 1) == [b"1", b"3", b"5", b"7", b"9"]
    assert failures == []


async def test_while_a_batch_is_in_flight_the_next_fills_and_order_holds() -> None:
    producer = FakeProducer(batch_size=200, delay_s=0.005)  # a few records a batch
    outbox = Outbox(lambda: producer, print)  # type: ignore[arg-type,return-value]
    for n in range(300):
        outbox.add("allowed", 0, 1, None, b"record-%04d" % n, None)
        if n % 7 == 0:
            await asyncio.sleep(0)
    await outbox.flush()
    assert values(producer, "allowed", 0) == [b"record-%04d" % n for n in range(300)]
    assert len(producer.sent) > 10  # full batches went without waiting for the turn


async def test_flush_waits_only_for_what_was_added_before_it() -> None:
    producer = FakeProducer(delay_s=0.02)
    outbox = Outbox(lambda: producer, print)  # type: ignore[arg-type,return-value]
    outbox.add("allowed", 0, 1, None, b"before", None)

    async def keep_adding() -> None:
        for n in range(50):
            outbox.add("allowed", 0, 1, None, b"after-%d" % n, None)
            await asyncio.sleep(0.005)

    adding = asyncio.create_task(keep_adding())
    await asyncio.wait_for(outbox.flush(), 1)
    assert values(producer, "allowed", 0)[0] == b"before"
    assert not adding.done()  # flush returned under a steady stream of new records
    await adding
    await outbox.flush()
    assert len(values(producer, "allowed", 0)) == 51


async def test_keyless_records_are_spread_over_partitions() -> None:
    producer = FakeProducer()
    outbox = Outbox(lambda: producer, print)  # type: ignore[arg-type,return-value]
    for _ in range(6):
        outbox.add("blocked", None, 3, None, b"x", (("h", b"v"),))  # a tuple is copied
    await outbox.flush()
    assert sorted(p for _, p, _ in producer.sent) == [0, 1, 2]


async def test_a_failed_delivery_stops_the_worker_and_fails_the_flush() -> None:
    producer, failures = FakeProducer(), []
    producer.fail = RuntimeError("broker said no")
    outbox = Outbox(lambda: producer, failures.append)  # type: ignore[arg-type,return-value]
    outbox.add("allowed", 0, 1, None, b"x", None)
    with pytest.raises(RuntimeError, match="broker said no"):
        await outbox.flush()  # so Faust's commit cannot pass the record
    assert len(failures) == 1


async def test_too_many_waiting_batches_ask_the_caller_to_wait() -> None:
    producer = FakeProducer(batch_size=64, delay_s=0.01)
    outbox = Outbox(lambda: producer, print, max_queued=4)  # type: ignore[arg-type,return-value]
    for n in range(40):
        outbox.add("allowed", 0, 1, None, b"%064d" % n, None)
    assert outbox.full
    await asyncio.wait_for(outbox.room(), 1)
    await outbox.flush()
    assert len(values(producer, "allowed", 0)) == 40


async def test_each_batch_reports_when_its_timed_records_came_in_once_it_is_delivered() -> None:
    producer = FakeProducer(batch_size=200, delay_s=0.005)  # a few records a batch
    reports: list[tuple[int, list[float]]] = []  # (batches delivered by then, times)
    handed: list[tuple[float, float]] = []  # (handed over, delivered)

    def on_delivered(since: list[float], at: float) -> None:
        reports.append((producer.delivered, list(since)))
        handed.append((at, time.monotonic()))

    outbox = Outbox(
        lambda: producer,  # type: ignore[arg-type,return-value]
        print,
        on_delivered=on_delivered,
    )
    began = time.monotonic()
    for n in range(100):
        outbox.add("allowed", n % 2, 2, None, b"record-%04d" % n, None, since=float(n))
        outbox.add("audit", 0, 1, None, b"audit-%04d" % n, None)  # not timed
        if n % 7 == 0:
            await asyncio.sleep(0)
    await outbox.flush()
    assert len(reports) > 4  # one report a delivered batch of the timed topic
    assert [at for _, ats in reports for at in ats if at % 2 == 0] == [
        float(n) for n in range(0, 100, 2)
    ]
    assert sorted(at for _, ats in reports for at in ats) == [float(n) for n in range(100)]
    delivered = [n for n, _ in reports]
    assert delivered == sorted(delivered) and delivered[0] >= 1  # after delivery, not before
    # handed over before it was delivered (the fake producer takes 5 ms to answer)
    assert all(began <= at <= done - 0.004 for at, done in handed)
