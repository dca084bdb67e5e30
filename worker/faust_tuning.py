"""The one place that reaches into Faust's internals (faust-streaming pinned in pyproject).

Faust keeps what the worker needs from it: the consumer group, the changelog-backed
table and its recovery, commits, rebalances. Six things are changed, through Faust's own
extension point (the transport's `Consumer` and `Producer` classes, the consumer thread):

1. The consumer's fetch wait. Faust 0.15.3 hard-codes `fetch_max_wait_ms=1500`; on a
   broker that holds a fetch for most of that wait (tansu) it is the latency floor of
   every message. It comes from the settings instead (Kafka's 500 ms by default).
2. The inbound topic's hot path. Faust hands each message to its streams through a
   lock, a decode into an Event, a channel queue, and two tasks raced per message
   (`wait_first`): ~150 µs a message, ten times the worker's own work. Here
   the consumer's drain loop reads each fetched batch itself and hands inbound records,
   as aiokafka gives them, straight to the worker's handler; the worker's pipeline acks
   them in order (`ack_inbound`: the last offset, no lock) and settles them before a
   revoke and at stop. Messages of an old consumer generation, or fetched while flow is
   suspended for a rebalance, are neither handled nor acked: Faust seeks back to the
   committed offset after the rebalance and they come again. The offset committed for the
   inbound topic is computed here (`_new_offset`), not by Faust's gap-filling rule.
3. Changelog messages (table recovery, standby replicas) go to Faust's callback directly
   while flow is active, instead of racing it against `suspend_flow` in two new tasks
   each (`wait_first`): table recovery ran at 10,600 records/s, one core's worth of
   Python, and that race was a quarter of it (bench: restart with 1,000,000 sessions).
   While flow is suspended the race is kept, so a rebalance still interrupts a blocked put.
4. Faust's consumer "thread" runs as a service of the worker's own event loop, and its
   calls are awaited directly: no second loop, no method queue and no hop between threads
   for every fetch, and no GIL traded back and forth (bench: the cached path ran 26k →
   33k msg/s). aiokafka's heartbeat then shares the loop: nothing in the worker blocks it
   for long (handlers await, the drain loop yields every 100 records).
5. Faust's producer awaits a hook before each flush (it flushes before every commit):
   the outbox (worker/outbox.py) hands over its batches and waits for their delivery.
6. The flush of Faust's producer buffer (table changelog writes wait there for the
   Kafka producer) waits for the writes made before it, not for an empty buffer: under
   steady table writes that never comes, and one commit took 17-36 s (slow-API bench).

Table writes need Faust's "current event" (it picks the changelog partition):
`run_as_current` builds an Event for the message and runs the write with it set.

tests/unit/test_faust_tuning.py fails loudly if a Faust upgrade moves any of this.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import aiokafka
import aiokafka.errors
import faust
from aiokafka.structs import ConsumerRecord
from faust.events import Event
from faust.exceptions import ConsumerNotStarted
from faust.streams import _current_event
from faust.transport.drivers import aiokafka as driver
from faust.transport.producer import ProducerBuffer
from faust.types import TP
from mode.utils.futures import maybe_async

RELIED_ON: dict[str, str] = {
    # what this module copies, overrides or relies on, with a fingerprint of its source
    # (the first 16 hex digits of its SHA-256): tests/unit/test_faust_tuning.py fails,
    # naming it, when an upgrade changes one; read the new code, then update the digest
    "faust.transport.consumer:Consumer._drain_messages": "44a2500309e83c63",
    "faust.transport.consumer:Consumer.on_partitions_revoked": "d04b7ae72c6fc206",
    "faust.transport.consumer:Consumer.wait_empty": "e4662fe24f094819",
    "faust.transport.consumer:Consumer.getmany": "4b168d84882a70d6",
    "faust.transport.consumer:Consumer._wait_next_records": "6218e1969a636b3f",
    "faust.transport.consumer:Consumer.ack": "5fcf41cf45153475",
    "faust.transport.consumer:Consumer._new_offset": "1d2c7ea89a7ad4f1",
    "faust.transport.consumer:Consumer.commit": "a354437baaa08bf8",
    "faust.transport.consumer:Consumer.maybe_wait_for_commit_to_finish": "d687f63a0b5ef0c5",
    "faust.transport.consumer:Consumer._add_gap": "4df2573ded7c1c2c",
    "faust.transport.consumer:Consumer.perform_seek": "0e8c130ff4b0afd8",
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._create_worker_consumer": (
        "c2701bfc3e6f6cad"
    ),
    "faust.transport.drivers.aiokafka:Consumer._to_message": "7c24f6511b2fcef7",
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread.seek_wait": "12e8d34e554e9024",
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._seek_wait": "9d221e816d940467",
    "faust.transport.drivers.aiokafka:ConsumerRebalanceListener.on_partitions_assigned": (
        "1c1f8406ad3698a6"
    ),
    "faust.transport.drivers.aiokafka:Producer.flush": "36d0cb3615f65b01",
    "faust.transport.producer:ProducerBuffer.flush": "26fbebb124ad9c98",
    "faust.transport.producer:ProducerBuffer._send_pending": "4a9d5f932b56bc68",
    "faust.transport.producer:ProducerBuffer.on_stop": "caffce6cde883392",
    "faust.app.base:App._on_partitions_revoked": "d5c895bbe57dc73a",
    "faust.app.base:App._stop_consumer": "55854a5de12c3f52",
    "mode.threads:ServiceThread.start": "f11841038a033a05",
    "mode.worker:Worker._schedule_shutdown": "1a6a5dfc88c2298b",
    "aiokafka.consumer.consumer:AIOKafkaConsumer.start": "2f1ba70443327538",
}
PRIVATE_NAMES = (
    # every private name this module (and worker/app.py through it) reads or writes
    "consumer._read_offset",
    "consumer._commit_every",
    "consumer._n_acked",
    "consumer._add_gap",
    "consumer._acked",
    "consumer._acked_index",
    "consumer._stopped",
    "consumer._thread",
    "consumer._drain_messages",
    "consumer._wait_next_records",
    "consumer._to_message",
    "consumer._committed_offset",
    "consumer._buffered_partitions",
    "consumer._new_consumer_thread",
    "thread._thread_started",
    "thread._serve",
    "thread._create_worker_consumer",
    "thread._ensure_consumer",
    "producer._producer",
    "producer.buffer",
    "app.monitor.stream_inbound_time",
    "app.topics._acking_topics",
)
"""Checked on a real app by tests/unit/test_faust_tuning.py; aiokafka's own
(`AIOKafkaConsumer._fetch_max_wait_ms`, `_client._conns`) and faust.streams._current_event
are checked there too."""

Handler = Callable[[TP, ConsumerRecord[bytes, bytes]], Awaitable[None]]
Settle = Callable[[set[TP] | None, str], Awaitable[Any]]
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FastPath:
    """The inbound topic's handler (see `route`)."""

    topic: str | None = None
    handle: Handler | None = None
    settle: Settle | None = None


class _ConsumerThread(driver.AIOKafkaConsumerThread):
    """Faust's consumer "thread", run as a service of the worker's own event loop."""

    async def start(self) -> None:
        # mode's ServiceThread.start() runs _serve() in a new thread with its own loop
        self._thread_started.set()
        self._thread_running = asyncio.Future(loop=self.parent_loop)
        self.add_future(self._serve())
        await self._thread_running
        self._thread_running = None

    async def call_thread(self, fun: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return await maybe_async(fun(*args, **kw))  # same loop: no queue, no thread hop

    async def seek_wait(self, partitions: Mapping[TP, int]) -> None:
        """Faust's, with a negative or missing offset read as the partition's start. Faust's
        recovery computed them when a rebalance landed in the middle of it (-1 and None, each
        once in 20 rounds of the close-faults soak): aiokafka refused them, the recovery
        service crashed, and the worker stopped. Reading a changelog from its start rebuilds
        the same table."""
        unusable = {
            tp: offset
            for tp, offset in partitions.items()
            if not isinstance(offset, int) or offset < 0
        }
        if unusable:
            log.warning("table recovery asked to seek to %s: reading from the start", unusable)
            partitions = {tp: 0 if tp in unusable else offset for tp, offset in partitions.items()}
        await super().seek_wait(partitions)

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # read by AIOKafkaConsumer.start() when it builds its Fetcher
        consumer._fetch_max_wait_ms = self.app.conf.secure_session_fetch_max_wait_ms
        return consumer


class _Consumer(driver.Consumer):
    def _new_consumer_thread(self) -> driver.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, thread_loop=self.loop, beacon=self.beacon)

    @property
    def _fast_path(self) -> FastPath:
        return cast(FastPath, self.app.conf.secure_session_fast_path)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        """Before Faust forgets the revoked partitions' acks: stop the intake, let what was
        taken be decided (a grace period) or abandoned, and commit what was decided."""
        path = self._fast_path
        if revoked and path.settle is not None and not self.app.should_stop:
            self.stop_flow()
            self.app.flow_control.suspend()
            await path.settle(revoked, "rebalance")
            try:
                # a periodic commit in flight would make this one return without committing
                await self.maybe_wait_for_commit_to_finish()
                await self.commit()
            except Exception as exc:  # noqa: BLE001 - not committed: read again (duplicates)
                log.warning("commit before a rebalance failed (%r): records come again", exc)
        await super().on_partitions_revoked(revoked)

    def _new_offset(self, tp: TP) -> int | None:
        """The offset to commit for `tp`. For the inbound topic: past the last acked record.

        The pipeline acks a partition's records strictly in the order they were handed over,
        so what is acked is always a prefix of that sequence, and the drain loop hands over
        every record after the committed offset (those it skips, of an old generation or
        while flow is suspended, come again after the rebalance's seek). Faust's own rule
        (the first run of consecutive acked offsets, gaps filled from the drain loop's read
        offsets) is not used for it: a seek in the middle of a batch (Faust seeks again when
        recovery completes) made it record a gap over records that were handed over, their
        offsets were then acked twice, and with duplicates its run of consecutive offsets
        ends at each one: commits crawled by one offset per interval (issue 16; Faust
        issues #625 and #606 on the same code)."""
        if tp.topic != self._fast_path.topic:
            return super()._new_offset(tp)
        acked = self._acked.get(tp)
        if not acked:
            return None
        offset = max(acked) + 1
        acked.clear()
        self._acked_index[tp].clear()
        return offset

    async def wait_empty(self) -> None:
        """Faust waits here for its streams at rebalances and at stop; the fast path's
        records are not Faust's to wait for: they are settled (decided or abandoned)."""
        path = self._fast_path
        if path.settle is not None:
            await path.settle(None, "stopping" if self.app.should_stop else "rebalance")
        await super().wait_empty()

    def ack_inbound(self, tp: TP, offset: int) -> None:
        """The fast path's ack (Faust's `ack` takes a lock and a Message, and keeps every
        offset): the pipeline acks a partition's records in hand-over order, so the last
        acked offset is all `_new_offset` needs."""
        committed = self._committed_offset[tp]
        if committed is None or offset >= committed:
            acked = self._acked[tp]  # listed there, a partition is looked at by the commit
            if acked:
                acked[-1] = offset
            else:
                acked.append(offset)
            self._n_acked += 1

    async def _drain_messages(self, fetcher: Any) -> None:
        """Faust's drain loop (faust/transport/consumer.py), with the inbound fast path.

        Fetched batches are read as Faust's `getmany` reads them (it waits while flow is
        suspended, skips partitions not active, seeks back when flow stopped during the
        fetch), but per partition, not per record: the inbound topic's records go to the
        handler as aiokafka gives them, without a Faust Message each, a highwater read
        each, or the scheduler's round-robin; a batch ends where the flow stops or the
        generation changes. Other topics' records (changelogs) go to Faust as before."""
        app = self.app
        fast_topic, handle = self._fast_path.topic, self._fast_path.handle
        if handle is None:  # nothing routed: Faust's own loop
            return await super()._drain_messages(fetcher)
        callback = self.callback
        to_message = self._to_message
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        read_offsets = self._read_offset
        commit_every = self._commit_every
        acks_enabled_for = app.topics.acks_enabled_for
        flow_active = app.flow_control.is_active
        # Faust's livelock check reads when a stream last took a record of each partition
        inbound_time = app.monitor.stream_inbound_time
        since_yield = 0
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                await asyncio.sleep(0)
                records, active = await self._wait_next_records(1.0)
                # no await from the fetch to here: the batch belongs to this generation
                generation = app.consumer_generation_id
                if records is None or self.should_stop:
                    continue
                if not self.flow_active:  # as Faust's getmany: suspended during the fetch
                    try:
                        await self.perform_seek()
                    except Exception as exc:  # noqa: BLE001 - as Faust's
                        log.warning("exception performing seek when flow not active %r", exc)
                    continue
                now = time.monotonic()
                for tp, batch in records.items():
                    if not (active is None or tp in active or tp in self._buffered_partitions):
                        continue
                    app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                    fast = tp.topic == fast_topic
                    for record in batch:
                        if not flow_active() or app.consumer_generation_id != generation:
                            break  # re-read after the rebalance's seek
                        since_yield += 1
                        if since_yield > 100:
                            await asyncio.sleep(0)
                            since_yield = 0
                        offset = record.offset
                        r_offset = read_offsets.get(tp)
                        if r_offset is not None and offset < r_offset:
                            continue  # already read
                        if commit_every is not None and self._n_acked >= commit_every:
                            self._n_acked = 0
                            await self.commit()
                        if fast:
                            # read once handed over, not after: a rebalance during the
                            # hand-over seeks back, and writing the offset after it would
                            # skip the records between the committed offset and this one
                            # (issue 16: lost records)
                            read_offsets[tp] = offset
                            inbound_time[tp] = now
                            await handle(tp, record)
                            continue
                        gap = offset - (r_offset or 0)  # Faust's gaps: only for its topics
                        if gap > 1 and r_offset and acks_enabled_for(tp.topic):
                            await self._add_gap(tp, r_offset + 1, offset)
                        message = to_message(tp, record)
                        if flow_active():
                            await callback(message)
                        else:
                            await self.wait_first(callback(message), self.suspend_flow.wait())
                        read_offsets[tp] = offset
                    else:
                        continue
                    break  # the flow stopped or the generation changed: the batch ends
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise


class _Buffer(ProducerBuffer):
    """Faust's producer buffer, its flush bounded (6. above)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.put_count = self.sent_count = 0
        self._progress = asyncio.Event()

    def put(self, fut: Any) -> None:
        self.put_count += 1
        super().put(fut)

    async def _send_pending(self, fut: Any) -> None:
        await super()._send_pending(fut)  # handed to the Kafka producer, in put order
        self.sent_count += 1
        self._progress.set()

    async def on_stop(self) -> None:
        await ProducerBuffer.flush(self)  # at shutdown: Faust's own, to empty

    async def flush(self) -> None:
        """Wait until every write put before this call is with the Kafka producer."""
        target = self.put_count
        while self.sent_count < target:
            if self.state != "running":  # as Faust's: nothing would send them
                raise RuntimeError("Cannot flush: Producer not Running")
            self._progress.clear()
            # then look at the state again; asyncio.timeout, not wait_for, which on 3.11
            # can lose a cancellation of this flush (gh-86296)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.1):
                    await self._progress.wait()


class _Producer(driver.Producer):
    before_flush: Callable[[], Awaitable[None]] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.app.conf.producer_threaded:  # its buffer sends another way
            raise RuntimeError("the worker's producer buffer needs producer_threaded off")
        self.buffer = _Buffer(loop=self.loop, beacon=self.beacon)
        self.buffer.app = self.app

    async def flush(self) -> None:
        if self.before_flush is not None:
            await self.before_flush()
        await super().flush()


class Transport(driver.Transport):
    """Faust's aiokafka transport with the worker's consumer and producer."""

    Consumer = _Consumer
    Producer = _Producer


def install(app: faust.App, *, fetch_max_wait_ms: int) -> None:
    """Use the tuned transport for `app` (right after creating it, before anything else)."""
    app.conf.secure_session_fetch_max_wait_ms = fetch_max_wait_ms
    app.conf.secure_session_fast_path = FastPath()
    app.transport = Transport(app.conf.broker_consumer, app)


def route(app: faust.App, topic: faust.TopicT, handler: Handler, settle: Settle) -> None:
    """`handler` receives every message of `topic`, in the consumer's drain loop; before a
    rebalance (the revoked partitions) and at stop (None) `settle` finishes or abandons
    what was handed over, and acks it; Faust's streams are not involved."""
    app.conf.secure_session_fast_path = FastPath(topic.get_topic_name(), handler, settle)
    app.topics.add(topic)  # subscribed and acked like a stream's topic


def before_flush(app: faust.App, flush: Callable[[], Awaitable[None]]) -> None:
    """Await `flush` whenever Faust flushes its producer (before every offset commit)."""
    app.producer.before_flush = flush  # type: ignore[attr-defined]


def kafka_producer(app: faust.App) -> aiokafka.AIOKafkaProducer:
    """The aiokafka producer under Faust's (the one Faust flushes before each commit)."""
    return cast(aiokafka.AIOKafkaProducer, app.producer._producer)  # type: ignore[attr-defined]


SEAM_ERRORS: collections.Counter[str] = collections.Counter()
"""Failures of the helpers below that read Faust's or aiokafka's internals, by helper:
exported as `secure_session_seam_errors_total` (worker/metrics.py) and logged as errors.
One means an upgrade moved something: the value it would have given is missing."""
_last_logged: dict[str, float] = {}


def _seam_failed(helper: str, exc: BaseException) -> None:
    SEAM_ERRORS[helper] += 1
    now = time.monotonic()
    if now - _last_logged.get(helper, -60.0) >= 60.0:  # once a minute per helper
        _last_logged[helper] = now
        log.error(
            "%s cannot read Faust's or aiokafka's internals (%r): its metric is missing; "
            "the installed versions differ from constraints.txt?",
            helper,
            exc,
        )


def _aiokafka_consumer(app: faust.App, helper: str) -> aiokafka.AIOKafkaConsumer | None:
    """The aiokafka consumer under Faust's; None before it has started, or when the
    internals it reads moved (logged and counted for `helper`: see `SEAM_ERRORS`)."""
    try:
        return app.consumer._thread._ensure_consumer()  # type: ignore[attr-defined]
    except ConsumerNotStarted:
        return None
    except Exception as exc:  # noqa: BLE001 - fail loudly, never take the worker down
        _seam_failed(helper, exc)
        return None


def kafka_connected(app: faust.App) -> bool | None:
    """Has the worker's consumer a live broker connection? None before it has started, or
    when the internals it reads moved (logged and counted: see `SEAM_ERRORS`)."""
    consumer = _aiokafka_consumer(app, "kafka_connected")
    if consumer is None:
        return None
    try:
        return any(conn.connected() for conn in list(consumer._client._conns.values()))
    except Exception as exc:  # noqa: BLE001
        _seam_failed("kafka_connected", exc)
        return None


async def group_lag(app: faust.App, topic: str) -> dict[int, int] | None:
    """Records of `topic` not yet committed by the group, for every partition (not only
    this worker's: a joining worker's lag would vanish). None while it cannot be read
    (before the consumer starts, a coordinator that does not answer within 2 s)."""
    consumer = _aiokafka_consumer(app, "lag")
    if consumer is None:
        return None
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [aiokafka.TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return None
        async with asyncio.timeout(2.0):
            ends = await consumer.end_offsets(tps)
            committed = {tp: await consumer.committed(tp) for tp in tps}
    except (TimeoutError, aiokafka.errors.KafkaError):
        return None  # a rebalance or a broker away: the last figures stay
    except Exception as exc:  # noqa: BLE001
        _seam_failed("lag", exc)
        return None
    return {tp.partition: max(0, ends[tp] - (committed[tp] or 0)) for tp in tps}


def run_as_current(
    app: faust.App, record: ConsumerRecord[bytes, bytes], fn: Callable[..., Any], *args: Any
) -> Any:
    """Run `fn(*args)` with an Event for the inbound `record` as Faust's current event."""
    consumer: Any = app.consumer
    message = consumer._to_message(TP(record.topic, record.partition), record)
    event = Event(app, message.key, message.value, message.headers, message)
    context = contextvars.copy_context()
    context.run(_current_event.set, weakref.ref(event))
    result = context.run(fn, *args)
    del event  # kept alive until here: the context var only holds a weak reference
    return cast(Any, result)
