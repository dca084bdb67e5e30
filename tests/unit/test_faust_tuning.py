"""Fails loudly when a Faust upgrade moves what worker/faust_tuning.py relies on."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import importlib
import importlib.metadata
import inspect
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiokafka
import faust
import pytest
from faust.transport.producer import ProducerBuffer
from prometheus_client import generate_latest

from worker import faust_tuning
from worker.metrics import Metrics


# a Faust app made outside a worker leaves an event loop of its own behind
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_the_worker_consumer_gets_the_configured_fetch_wait() -> None:
    app = faust.App("tuning-test", broker="kafka://127.0.0.1:1", broker_max_poll_records=321)
    faust_tuning.install(app, fetch_max_wait_ms=7)
    assert isinstance(app.transport, faust_tuning.Transport)
    consumer = app.consumer
    thread = consumer._new_consumer_thread()
    assert isinstance(thread, faust_tuning._ConsumerThread)
    created = thread._create_worker_consumer(app.transport)
    try:
        assert isinstance(created, aiokafka.AIOKafkaConsumer)
        assert created._fetch_max_wait_ms == 7
        assert created._max_poll_records == 321  # Faust passes it on (KAFKA_MAX_POLL_RECORDS)
    finally:
        await created.stop()
        del app, consumer, thread, created
        gc.collect()  # the leaked loop is reported here, under this test's filters


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_the_consumer_thread_runs_in_the_worker_loop_and_calls_directly() -> None:
    app = faust.App("tuning-loop-test", broker="kafka://127.0.0.1:1")
    faust_tuning.install(app, fetch_max_wait_ms=7)
    thread = app.consumer._new_consumer_thread()
    try:
        # mode's ServiceThread parts the in-loop start relies on
        assert thread.thread_loop is thread.parent_loop is app.consumer.loop
        for name in ("_thread_started", "_serve", "wait_until_stopped", "add_future"):
            assert hasattr(thread, name), name

        async def double(n: int) -> int:
            return 2 * n

        assert await thread.call_thread(double, 21) == 42
        assert await thread.call_thread(lambda n: n + 1, 1) == 2  # plain functions too
        producer = app.producer
        assert isinstance(producer, faust_tuning._Producer)
        assert isinstance(producer.buffer, faust_tuning._Buffer)
        flushed: list[bool] = []

        async def before() -> None:
            flushed.append(True)

        faust_tuning.before_flush(app, before)
        await producer.flush()  # no aiokafka producer yet: only the hook runs
        assert flushed == [True]
    finally:
        del app, thread
        gc.collect()


class _Channel:
    """What a buffered table write is published through; takes 1 ms a write."""

    def __init__(self) -> None:
        self.sent: list[int] = []

    async def publish_message(self, fut: Any, wait: bool = False) -> None:
        await asyncio.sleep(0.001)
        self.sent.append(fut.n)


def _write(n: int, channel: _Channel) -> Any:
    return SimpleNamespace(n=n, message=SimpleNamespace(channel=channel))


async def test_the_producer_buffer_flush_waits_for_the_writes_before_it_only() -> None:
    buffer = faust_tuning._Buffer()
    buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))  # type: ignore[assignment]
    channel = _Channel()
    for n in range(10):
        buffer.put(_write(n, channel))
    with pytest.raises(RuntimeError):  # not started: nothing would send them
        await buffer.flush()
    await buffer.start()

    async def keep_writing() -> None:  # faster than they are sent: never empty
        n = 10
        while True:
            buffer.put(_write(n, channel))
            n += 1
            await asyncio.sleep(0.0005)

    writer = asyncio.create_task(keep_writing())
    # Faust's own flush waits for an empty buffer. Not under asyncio.wait_for: on 3.11 its
    # cancellation can be lost in the nested wait_for Faust's flush loops on (gh-86296),
    # and the test then hung; a task of its own is watched instead.
    faust_flush = asyncio.create_task(ProducerBuffer.flush(buffer))
    try:
        await asyncio.sleep(0.3)
        assert not faust_flush.done()  # still waiting: the buffer is never empty
        before = buffer.put_count
        await asyncio.wait_for(buffer.flush(), 10)  # ~0.3 s here, more on a busy machine
        assert channel.sent[:before] == list(range(before))
        assert buffer.size > 0  # later writes still wait: they were not waited for
        writer.cancel()
        await buffer.flush()  # with no more writes: all of them
        assert channel.sent == list(range(buffer.put_count))
        await asyncio.wait_for(faust_flush, 10)  # the buffer empty, Faust's returns too
    finally:
        writer.cancel()
        faust_flush.cancel()
        # after a failure writes may be left, and Faust's flush at stop raises: not the point
        with contextlib.suppress(RuntimeError):
            await buffer.stop()


class _Drain:
    """The tuned drain loop over a fake fetch: `batches` of offsets of one partition, handed
    to a handler that records (offset, generation) and runs the hook set for an offset."""

    def __init__(self, app: faust.App) -> None:
        self.app = app
        self.consumer = app.consumer
        self.tp = faust.types.TP("inbound", 0)
        self.batches: list[list[int]] = []
        self.handled: list[tuple[int, int]] = []
        self.on_handle: dict[int, Any] = {}
        self.fetcher = SimpleNamespace(_stopped=asyncio.Event())

        async def handle(tp: Any, record: Any) -> None:
            assert tp == self.tp
            self.handled.append((record.offset, self.app.consumer_generation_id))
            if (hook := self.on_handle.pop(record.offset, None)) is not None:
                await hook()

        async def settle(_partitions: Any, _why: str) -> None:
            return None

        topic = app.topic("inbound", value_serializer="raw")
        faust_tuning.route(app, topic, handle, settle)
        self.consumer._wait_next_records = self._wait_next_records
        self.consumer.highwater = lambda tp: 0

    async def _wait_next_records(self, timeout: float) -> Any:
        if not self.batches:
            self.fetcher._stopped.set()
            return {}, None
        offsets = self.batches.pop(0)
        return {self.tp: [SimpleNamespace(topic="inbound", offset=n) for n in offsets]}, None

    async def run(self) -> None:
        await asyncio.wait_for(self.consumer._drain_messages(self.fetcher), 10)


@pytest.fixture
def drain() -> Any:
    app = faust.App("drain-test", broker="kafka://127.0.0.1:1")
    faust_tuning.install(app, fetch_max_wait_ms=7)
    app.consumer_generation_id = 1
    app.flow_control.resume()
    yield _Drain(app)
    del app
    gc.collect()


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_drain_a_rebalance_during_the_hand_over_loses_nothing(drain: _Drain) -> None:
    """Issue 16's loss: record 5 is being handed over when a rebalance seeks the partition
    back to its committed offset (0) in a new generation; every record comes again."""

    async def rebalance() -> None:
        drain.app.consumer_generation_id = 2
        await drain.consumer.seek(drain.tp, 0)  # Faust's perform_seek after the assignment

    drain.consumer._seek = lambda tp, offset: asyncio.sleep(0)  # no Kafka client here
    drain.on_handle[5] = rebalance
    drain.batches = [list(range(8)), list(range(10))]
    await drain.run()
    assert drain.handled == [(n, 1) for n in range(6)] + [(n, 2) for n in range(10)]


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_drain_skips_old_generations_and_suspended_flow_without_reading_them(
    drain: _Drain,
) -> None:
    async def new_generation() -> None:  # a rebalance in the middle of a batch
        drain.app.consumer_generation_id = 2

    async def revoke() -> None:  # a revoke in the middle of a batch
        drain.app.flow_control.suspend()

    drain.on_handle[0] = new_generation
    drain.on_handle[3] = revoke
    drain.batches = [[0, 1], list(range(6))]
    await drain.run()
    # 1: fetched in generation 1; 4-5: after the revoke; neither handed over
    assert drain.handled == [(0, 1)] + [(n, 2) for n in range(4)]
    assert drain.consumer._read_offset[drain.tp] == 3  # so the seek brings 4 and 5 again
    drain.app.flow_control.resume()
    drain.fetcher._stopped.clear()
    drain.batches = [list(range(2, 7))]  # as after a seek to 2
    await drain.run()
    # below the read offset: skipped; from it on (Faust's "next to read" after a seek): again
    assert drain.handled[5:] == [(3, 2), (4, 2), (5, 2), (6, 2)]


def _ack_all(drain: _Drain, offsets: list[int]) -> None:
    """Ack in hand-over order, as the pipeline does."""
    for offset in offsets:
        drain.consumer.ack_inbound(drain.tp, offset)


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_drain_commits_past_gaps_and_feeds_faust_livelock_check(drain: _Drain) -> None:
    drain.app.topics._acking_topics.add("inbound")  # as once subscribed
    drain.batches = [[0, 1, 7, 8]]  # 2-6: compacted or markers
    await drain.run()
    assert [o for o, _ in drain.handled] == [0, 1, 7, 8]
    _ack_all(drain, [0, 1, 7])
    assert drain.consumer._new_offset(drain.tp) == 8  # past 7: 8 is not acked yet
    assert drain.consumer._new_offset(drain.tp) is None  # nothing new
    _ack_all(drain, [8])
    assert drain.consumer._new_offset(drain.tp) == 9
    # Faust's "Stream has not started processing" check reads this per partition
    assert drain.tp in drain.app.monitor.stream_inbound_time


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_drain_a_seek_in_the_middle_of_a_batch_does_not_stall_commits(
    drain: _Drain,
) -> None:
    """Issue 16's stuck commits: Faust seeks to the committed offset (5) again when
    recovery completes, while the drain loop is still in a batch fetched before. Faust's
    rule then recorded a gap over records already handed over (6-11), acked them twice,
    and committed one short run per interval (here: 7 instead of 40)."""

    async def seek_again() -> None:  # same generation: Faust's on_recovery_completed
        await drain.consumer.seek(drain.tp, 5)
        drain.consumer._committed_offset[drain.tp] = 5  # as perform_seek records it

    drain.app.topics._acking_topics.add("inbound")
    drain.consumer._seek = lambda tp, offset: asyncio.sleep(0)
    drain.consumer._read_offset[drain.tp] = 5
    drain.consumer._committed_offset[drain.tp] = 5
    drain.on_handle[10] = seek_again
    drain.batches = [list(range(5, 40)), list(range(5, 40))]
    await drain.run()
    handled = [o for o, _ in drain.handled]
    assert handled[:35] == list(range(5, 40))  # the re-fetch after the seek: already read
    _ack_all(drain, handled)
    assert drain.consumer._new_offset(drain.tp) == 40


def test_what_the_worker_relies_on_in_faust_mode_and_aiokafka_is_unchanged() -> None:
    """An upgrade of faust-streaming, mode-streaming or aiokafka fails here, naming each
    function whose source moved (constraints.txt pins them; read the new code first)."""
    moved = []
    for name, digest in faust_tuning.RELIED_ON.items():
        module, attr = name.split(":")
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        source = inspect.getsource(inspect.unwrap(obj))
        if hashlib.sha256(source.encode()).hexdigest()[:16] != digest:
            moved.append(name)
    assert not moved, f"changed upstream: {moved}"


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_every_private_name_the_worker_touches_is_there() -> None:
    app = faust.App("names-test", broker="kafka://127.0.0.1:1")
    faust_tuning.install(app, fetch_max_wait_ms=7)
    roots = {
        "app": app,
        "consumer": app.consumer,
        "thread": app.consumer._thread,
        "producer": app.producer,
    }
    missing = []
    for name in faust_tuning.PRIVATE_NAMES:
        root, *path = name.split(".")
        obj: Any = roots[root]
        for part in path:
            if not hasattr(obj, part):
                missing.append(name)
                break
            obj = getattr(obj, part)
    assert hasattr(importlib.import_module("faust.streams"), "_current_event")
    consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
    assert hasattr(consumer, "_fetch_max_wait_ms") and hasattr(consumer._client, "_conns")
    await consumer.stop()
    assert not missing, f"gone upstream: {missing}"
    del app, roots
    gc.collect()


def test_the_pins_are_what_is_installed() -> None:
    """constraints.txt (used by make, CI and the Dockerfile) pins the libraries whose
    internals the worker touches; the tests ran against exactly those."""
    pins = dict(
        line.split("==")
        for line in (Path(__file__).parents[2] / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    for package in ("faust-streaming", "mode-streaming", "aiokafka"):
        assert importlib.metadata.version(package) == pins[package].split()[0], package


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_helpers_reading_internals_fail_loudly(caplog: pytest.LogCaptureFixture) -> None:
    """When an upgrade moves what they read: an error log and a metric, never a silent
    empty value (and never an exception into the worker)."""
    app = faust.App("seam-test", broker="kafka://127.0.0.1:1")
    faust_tuning.install(app, fetch_max_wait_ms=7)
    before = dict(faust_tuning.SEAM_ERRORS)
    app.consumer._thread = SimpleNamespace()  # no _ensure_consumer any more
    with caplog.at_level("ERROR"):
        assert faust_tuning.kafka_connected(app) is None
        assert await faust_tuning.group_lag(app, "inbound") is None
    assert faust_tuning.SEAM_ERRORS["kafka_connected"] == before.get("kafka_connected", 0) + 1
    assert faust_tuning.SEAM_ERRORS["lag"] == before.get("lag", 0) + 1
    assert [r.getMessage().split(" ")[0] for r in caplog.records] == ["kafka_connected", "lag"]
    text = generate_latest(Metrics().registry).decode()
    assert 'secure_session_seam_errors_total{helper="lag"}' in text


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_negative_recovery_seek_reads_from_the_start() -> None:
    """Seen in the close-faults soak: Faust's recovery asked aiokafka to seek a standby
    changelog partition to a negative offset mid-rebalance; aiokafka raised, the worker
    stopped. Here aiokafka's own seek check runs on what reaches it."""
    app = faust.App("seek-test", broker="kafka://127.0.0.1:1")
    faust_tuning.install(app, fetch_max_wait_ms=7)
    thread = app.consumer._thread
    seeks: list[tuple[Any, int]] = []

    def seek(tp: Any, offset: int) -> None:
        if offset < 0:  # as AIOKafkaConsumer.seek
            raise ValueError("Offset must be a positive integer")
        seeks.append((tp, offset))

    async def position(tp: Any) -> int:
        return 0

    thread._ensure_consumer = lambda: SimpleNamespace(seek=seek, position=position)
    tp, other = faust.types.TP("changelog", 0), faust.types.TP("changelog", 1)
    missing = faust.types.TP("changelog", 2)
    await thread.seek_wait({tp: -2, other: 7, missing: None})  # type: ignore[dict-item]
    assert sorted(seeks) == [(tp, 0), (other, 7), (missing, 0)]
