"""Kafka plumbing outside Faust: topic bootstrap, the config-topic follower, publishing."""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Literal

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import murmur2

from worker.config import ConfigFile, Registry
from worker.errors import TopicSetupError
from worker.settings import Settings

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=2**16)
async def start(client: Any) -> None:
    """Start an aiokafka client; stopped again if it cannot start (no "Unclosed" warning)."""
    try:
        await client.start()
    except BaseException:
        await client.stop()
        raise


def partition_for(key: bytes, count: int) -> int:
    """Kafka's default partitioner (murmur2), remembered: sessions send many records."""
    return int(murmur2(key) & 0x7FFFFFFF) % count


def client_options(settings: Settings) -> dict[str, Any]:
    """Where and how aiokafka clients connect: bootstrap servers, TLS, SASL."""
    return {"bootstrap_servers": settings.bootstrap_servers, **settings.security.client_options()}


async def ensure_topics(settings: Settings) -> dict[str, int]:
    """Create the topics that are missing; return the data topics' partition counts.

    The inbound topic may exist already (bot channels create it): the worker follows its
    partition count for the topics it creates and for its table. Config topics are compacted.
    """
    t = settings.topics
    data = (t.inbound, t.allowed, t.blocked, t.audit)
    admin = AIOKafkaAdminClient(**client_options(settings))
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
        compact = {"cleanup.policy": "compact"}
        wanted += [
            NewTopic(name, 1, rf, topic_configs=compact)
            for name in (t.bots, t.connectors, t.revocations)
        ]
        # Faust's own: the session table's changelog and its group-leader topic
        wanted.append(NewTopic(changelog_topic(settings), inbound, rf, topic_configs=compact))
        wanted.append(NewTopic(f"{settings.app_id}-__assignor-__leader", 1, rf))
        missing = [nt for nt in wanted if nt.name not in existing]
        if missing and not settings.create_topics:
            raise TopicSetupError(_missing_topics(missing, "SECURE_SESSION_CREATE_TOPICS is off"))
        if missing:
            log.info("creating topics: %s", ", ".join(nt.name for nt in missing))
            response = await admin.create_topics(missing)
            refused = []
            for name, code, *rest in response.topic_errors:
                # 36: TOPIC_ALREADY_EXISTS (another worker was first)
                if code not in (0, 36):
                    refused.append(f"{name}: {rest[0] if rest and rest[0] else f'code {code}'}")
            if refused:
                why = "the broker refused (" + "; ".join(refused) + ")"
                raise TopicSetupError(_missing_topics(missing, why))
        return {name: counts.get(name, inbound) for name in data}
    finally:
        await admin.close()


def changelog_topic(settings: Settings) -> str:
    """The session table's changelog (Faust's name for table `sessions`)."""
    return f"{settings.app_id}-sessions-changelog"


def _missing_topics(missing: list[NewTopic], why: str) -> str:
    """What to create, and how, when the worker may not create its topics itself."""
    lines = [f"{len(missing)} topics missing and not created: {why}. Create them with:"]
    for nt in missing:
        config = "".join(f" --config {k}={v}" for k, v in (nt.topic_configs or {}).items())
        lines.append(
            f"  kafka-topics.sh --create --topic {nt.name} --partitions {nt.num_partitions}"
            f" --replication-factor {nt.replication_factor}{config}"
        )
    lines.append(
        "and give the worker's principal Read/Write on them, Read on its group, and Create on"
        " its changelog topics (or set SECURE_SESSION_CREATE_TOPICS=1 with Create on the cluster)."
    )
    return "\n".join(lines)


async def follow_config(settings: Settings, registry: Registry, ready: asyncio.Event) -> None:
    """Apply the config topics to `registry` forever; set `ready` once caught up."""
    t = settings.topics
    kinds: dict[str, Literal["bot", "connector", "revocation"]] = {
        t.bots: "bot",
        t.connectors: "connector",
        t.revocations: "revocation",
    }
    consumer = AIOKafkaConsumer(
        **client_options(settings),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id=f"{settings.app_id}-config",
    )
    await start(consumer)
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
                kind = kinds[tp.topic]
                for m in messages:
                    if kind == "revocation":
                        registry.revocations.apply(m.key, m.value)
                    else:
                        registry.apply(kind, m.key, m.value)
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
    producer = AIOKafkaProducer(**client_options(settings))
    await start(producer)
    try:
        for topic, key, value in records:
            # one record per batch keeps end offsets exact on every broker
            await producer.send_and_wait(topic, value, key=key.encode())
    finally:
        await producer.stop()
