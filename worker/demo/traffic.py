"""Demo traffic: a few signed-in users, intruders and broken records; prints each decision.

`python -m worker.demo.traffic` runs it against KAFKA_BOOTSTRAP_SERVERS (docker-compose).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord

from worker.kafka import start
from worker.settings import Topics
from worker.text import printable

DEMO_TOPICS = Topics()
USERS = {"conv-alice": "valid-token-alice", "conv-bob": "valid-token-bob"}
COLOR = {"allowed": "\033[32m", "blocked": "\033[31m"}
RESET = "\033[0m"


def demo_event(n: int) -> tuple[bytes | None, bytes]:
    """The n-th demo record: mostly signed-in users, some intruders and broken records."""
    rnd = random.Random(n)
    pick = rnd.random()
    base = {
        "id": f"m-{n}",
        "organization": "acme",
        "bot": "securebot",
        "type": "message",
        "timestamp": int(time.time() * 1000),
        "payload": {"text": f"hello #{n}"},
    }
    if pick < 0.55:
        session, token = rnd.choice(list(USERS.items()))
        ev = {**base, "sessionId": session, "context": {"secureTokenForUser": token}}
    elif pick < 0.70:
        ev = {**base, "sessionId": "conv-mallory", "context": {"secureTokenForUser": "stolen"}}
    elif pick < 0.78:
        ev = {**base, "sessionId": "conv-guest", "context": {}}
    elif pick < 0.88:
        ev = {**base, "bot": "faqbot", "sessionId": "conv-faq"}
    elif pick < 0.94:
        ev = {**base, "bot": "ghostbot", "sessionId": "conv-ghost"}
    else:
        return b"conv-broken", b'{"id": "m-broken", "organization": '
    return str(ev["sessionId"]).encode(), orjson.dumps(ev)


def line(topic: str, key: bytes | None, value: bytes, headers: dict[str, bytes]) -> str:
    """One decision as a line; what events carry is shown escaped (no terminal control)."""
    session = printable(key.decode(errors="replace")) if key else "-"
    if topic == "allowed":
        doc = orjson.loads(value)
        reason = printable(headers.get("secure-session-reason", b"").decode(errors="replace"))
        what = printable(f"{doc.get('bot') or '-'}  {doc.get('id') or '-'}")
        return f"{COLOR['allowed']}ALLOWED {reason:<26}{RESET} {session:<14} {what}"
    doc = orjson.loads(value)
    what = printable(f"{doc.get('bot') or '-'}  {doc.get('messageId') or '-'}  ({doc['detail']})")
    return (
        f"{COLOR['blocked']}BLOCKED {printable(str(doc['reason'])):<26}{RESET} {session:<14} {what}"
    )


async def run_traffic(
    client: Mapping[str, Any],
    duration: float | None,
    rate: float,
    show: Callable[[str, ConsumerRecord[bytes, bytes]], None],
    alive: Callable[[], bool] = lambda: True,
    topics: Topics = DEMO_TOPICS,
) -> int:
    """Send demo records at `rate` a second; `show(kind, record)` for each output record.

    kind: allowed, blocked or audit. Returns how many decisions were shown.
    """
    producer = AIOKafkaProducer(**client)
    consumer = AIOKafkaConsumer(
        topics.allowed,
        topics.blocked,
        topics.audit,
        **client,
        group_id=None,
        auto_offset_reset="latest",
        metadata_max_age_ms=1000,
    )
    await start(producer)
    try:
        await start(consumer)
    except BaseException:
        await producer.stop()
        raise
    kinds = {topics.allowed: "allowed", topics.blocked: "blocked", topics.audit: "audit"}

    async def produce() -> None:
        for n in itertools.count():
            key, value = demo_event(n)
            await producer.send_and_wait(topics.inbound, value, key=key)
            await asyncio.sleep(1 / rate)

    sender = asyncio.create_task(produce())
    shown = 0
    stop_at = None if duration is None else time.monotonic() + duration
    try:
        while alive() and (stop_at is None or time.monotonic() < stop_at):
            batch = await consumer.getmany(timeout_ms=200)
            for tp, messages in batch.items():
                kind = kinds[tp.topic]
                for m in messages:
                    show(kind, m)
                    shown += kind != "audit"
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        await consumer.stop()
        await producer.stop()
    return shown


def print_line(kind: str, m: ConsumerRecord[bytes, bytes]) -> None:
    """`show` for line mode: one coloured line per decision (audit records skipped)."""
    if kind != "audit":
        print(line(kind, m.key, m.value or b"", dict(m.headers)), flush=True)


async def watch_decisions(
    client: Mapping[str, Any], allowed: str, blocked: str, from_beginning: bool
) -> None:
    """Print decisions forever (`client`: aiokafka connection options)."""
    consumer = AIOKafkaConsumer(
        allowed,
        blocked,
        **client,
        group_id=None,
        auto_offset_reset="earliest" if from_beginning else "latest",
    )
    kinds = {allowed: "allowed", blocked: "blocked"}
    await start(consumer)
    try:
        async for m in consumer:
            print(line(kinds[m.topic], m.key, m.value, dict(m.headers)), flush=True)
    finally:
        await consumer.stop()


if __name__ == "__main__":
    from worker.kafka import client_options
    from worker.settings import Settings

    client = client_options(Settings.from_env())
    rate = float(os.environ.get("DEMO_RATE", "3"))
    asyncio.run(run_traffic(client, None, rate, print_line))
