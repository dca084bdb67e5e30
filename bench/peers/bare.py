"""The baseline: a bare aiokafka consume-decode-produce loop."""

from __future__ import annotations

import os
import time

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.harness import Bench
from worker.settings import Settings


async def bare_loop(b: Bench, records: list[tuple[bytes, bytes]], tag: str) -> float:
    """The bare aiokafka consume-decode-produce loop, on the same records (a backlog)."""
    src, dst = f"bench.bare{tag}.in", f"bench.bare{tag}.out"
    await b.create([src, dst])
    await b.produce(src, records)
    consumer = AIOKafkaConsumer(
        src,
        bootstrap_servers=b.bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        max_poll_records=5000,
    )
    # batches as large as the worker's, which reads the same variable: like with like
    batch = Settings.from_env(os.environ).kafka.producer_max_batch_size
    producer = AIOKafkaProducer(bootstrap_servers=b.bootstrap, linger_ms=5, max_batch_size=batch)
    await consumer.start()
    await producer.start()
    state: dict[bytes, int] = {}
    seen, started = 0, 0.0
    try:
        while seen < len(records):
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            if batch and not started:
                started = time.monotonic()
            for msgs in batch.values():
                for m in msgs:
                    doc = orjson.loads(m.value)
                    state[m.key] = state.get(m.key, 0) + 1
                    if doc["type"] == "message":
                        await producer.send(
                            dst, m.value, key=m.key, headers=[("secure-session-reason", b"cached")]
                        )
                    seen += 1
        await producer.flush()
        return len(records) / (time.monotonic() - started)
    finally:
        await consumer.stop()
        await producer.stop()
