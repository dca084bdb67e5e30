"""Kafka plumbing outside Faust: topic bootstrap, the config-topic follower, publishing."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from worker.config import ConfigFile, Registry
from worker.errors import TopicSetupError
from worker.settings import Settings

log = logging.getLogger(__name__)


async def ensure_topics(settings: Settings) -> dict[str, int]:
    """Create the topics that are missing; return the data topics' partition counts.

    The inbound topic may exist already (bot channels create it): the worker follows its
    partition count for the topics it creates and for its table. Config topics are compacted.
    """
    t = settings.topics
    data = (t.inbound, t.allowed, t.blocked, t.audit)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        counts = {
            meta["topic"]: len(meta["partitions"])
            for meta in await admin.describe_topics([n for n in data if n in existing])
        }
        inbound = counts.get(t.inbound, settings.partitions)
        rf = settings.replication_factor
        wanted = [NewTopic(name, inbound, rf) for name in data]
        wanted += [
            NewTopic(name, 1, rf, topic_configs={"cleanup.policy": "compact"})
            for name in (t.bots, t.connectors)
        ]
        missing = [nt for nt in wanted if nt.name not in existing]
        if missing:
            log.info("creating topics: %s", ", ".join(nt.name for nt in missing))
            response = await admin.create_topics(missing)
            for name, code, *rest in response.topic_errors:
                # 36: TOPIC_ALREADY_EXISTS (another worker was first)
                if code not in (0, 36):
                    why = rest[0] if rest and rest[0] else f"error code {code}"
                    raise TopicSetupError(f"cannot create topic {name!r}: {why}")
        return {name: counts.get(name, inbound) for name in data}
    finally:
        await admin.close()


async def follow_config(settings: Settings, registry: Registry, ready: asyncio.Event) -> None:
    """Apply the config topics to `registry` forever; set `ready` once caught up."""
    t = settings.topics
    kinds: dict[str, Literal["bot", "connector"]] = {t.bots: "bot", t.connectors: "connector"}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id=f"{settings.app_id}-config",
    )
    await consumer.start()
    try:
        await consumer.topics()  # loads metadata for every topic
        tps = [
            TopicPartition(topic, p)
            for topic in kinds
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        behind = {tp for tp in tps if end[tp] > 0}
        while True:
            if not behind and not ready.is_set():
                log.info(
                    "configuration ready: %d bots, %d connectors",
                    len(registry.bots),
                    len(registry.connectors),
                )
                ready.set()
            batches = await consumer.getmany(timeout_ms=500)
            for tp, messages in batches.items():
                for m in messages:
                    registry.apply(kinds[tp.topic], m.key, m.value)
            for tp in list(behind):
                if await consumer.position(tp) >= end[tp]:
                    behind.discard(tp)
    finally:
        await consumer.stop()


async def publish_config(settings: Settings, config: ConfigFile) -> int:
    """Write a checked config file to the two compacted topics; return the record count."""
    records: list[tuple[str, str, dict[str, Any]]] = [
        (settings.topics.bots, f"{b['Organization']}/{b['Name']}", b) for b in config.raw_bots
    ]
    records += [
        (settings.topics.connectors, f"{c['Organization']}/{c['Alias']}", c)
        for c in config.raw_connectors
    ]
    await publish(settings, [(topic, key, orjson.dumps(v)) for topic, key, v in records])
    return len(records)


async def publish(settings: Settings, records: list[tuple[str, str, bytes | None]]) -> None:
    """Send (topic, key, value) records one at a time (value None: a tombstone)."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    await producer.start()
    try:
        for topic, key, value in records:
            # one record per batch keeps end offsets exact on every broker
            await producer.send_and_wait(topic, value, key=key.encode())
    finally:
        await producer.stop()
