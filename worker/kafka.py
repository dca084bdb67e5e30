"""Kafka plumbing outside Faust: topic bootstrap, the config-topic follower, publishing."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import murmur2

from worker.audit import START, Link, Sealer, config_event, publisher_of, signing_key
from worker.config import ConfigFile, Registry
from worker.errors import TopicSetupError
from worker.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


async def start(client: Any) -> None:
    """Start an aiokafka client; stopped again if it cannot start (no "Unclosed" warning)."""
    try:
        await client.start()
    except BaseException:
        await client.stop()
        raise


@functools.lru_cache(maxsize=2**16)
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
    """Send (topic, key, value) records one at a time (value None: a tombstone), and an
    audit event for each bot or connector whose record this changes (worker/audit.py)."""
    audit = await _config_audit(settings, records)
    producer = AIOKafkaProducer(**client_options(settings))
    await start(producer)
    try:
        for topic, key, value in records:
            # one record per batch keeps end offsets exact on every broker
            await producer.send_and_wait(topic, value, key=key.encode())
        for key, value in audit:
            await producer.send_and_wait(settings.topics.audit, value, key=key.encode())
    finally:
        await producer.stop()


async def _config_audit(
    settings: Settings, records: list[tuple[str, str, bytes | None]]
) -> list[tuple[str, bytes]]:
    """The `config_changed` events of `records`, keyed and chained by organization."""
    t = settings.topics
    records = [r for r in records if r[0] in (t.bots, t.connectors)]  # not events, revocations
    if not records:
        return []
    key = signing_key(settings)
    sealer = None if key is None else Sealer(key)
    publisher = publisher_of()
    current = await _reading(settings, _latest_values, sorted({topic for topic, _, _ in records}))
    links: dict[str, Link] = {}
    out: list[tuple[str, bytes]] = []
    now_ms = int(time.time() * 1000)
    for topic, name, value in records:
        if current.get((topic, name)) == value:
            continue  # unchanged (or deleting what is not there)
        current[(topic, name)] = value
        org, _, item = name.partition("/")
        doc = config_event(org, "bot" if topic == t.bots else "connector", item, value)
        doc["time"] = now_ms
        doc["publisher"] = publisher
        if sealer is None:
            out.append((org, orjson.dumps(doc)))
            continue
        if org not in links:
            links[org] = await _reading(settings, _last_config_link, t.audit, org)
        raw, links[org] = sealer.seal(doc, links[org])
        out.append((org, raw))
    return out


async def _reading(settings: Settings, read: Callable[..., Awaitable[T]], *args: Any) -> T:
    """`read(consumer, *args)` with a consumer of its own (no group)."""
    consumer = AIOKafkaConsumer(**client_options(settings), group_id=None, enable_auto_commit=False)
    await start(consumer)
    try:
        return await read(consumer, *args)
    finally:
        await consumer.stop()


async def _latest_values(
    consumer: AIOKafkaConsumer, topics: list[str]
) -> dict[tuple[str, str], bytes | None]:
    """The last value of every key of `topics` (compacted and small: the config topics)."""
    await consumer.topics()
    tps = [TopicPartition(n, p) for n in topics for p in consumer.partitions_for_topic(n) or ()]
    if not tps:
        return {}
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    end = await consumer.end_offsets(tps)
    values: dict[tuple[str, str], bytes | None] = {}
    pending = {tp for tp in tps if end[tp] > 0}
    while pending:
        for tp, batch in (await consumer.getmany(*pending, timeout_ms=500)).items():
            for m in batch:
                values[(tp.topic, (m.key or b"").decode(errors="replace"))] = m.value
        for tp in list(pending):
            if await consumer.position(tp) >= end[tp]:
                pending.discard(tp)
    return values


async def _last_config_link(consumer: AIOKafkaConsumer, topic: str, org: str) -> Link:
    """Where `org`'s configuration chain stands: its last signed `config_changed` event,
    looked for from the end of its audit partition back, in growing windows."""
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        return START
    tp = TopicPartition(topic, partition_for(org.encode(), len(partitions)))
    consumer.assign([tp])
    begin = (await consumer.beginning_offsets([tp]))[tp]
    hi = (await consumer.end_offsets([tp]))[tp]
    window = 1_000
    while hi > begin:
        lo = max(begin, hi - window)
        consumer.seek(tp, lo)
        found = None
        while await consumer.position(tp) < hi:
            for m in (await consumer.getmany(tp, timeout_ms=500)).get(tp, []):
                if m.offset < hi and m.key == org.encode() and m.value:
                    found = _config_link(m.value, org) or found
        if found is not None:
            return found
        hi, window = lo, window * 4
    return START


def _config_link(raw: bytes, org: str) -> Link | None:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not (
        isinstance(doc, dict)
        and doc.get("kind") == "config_changed"
        and doc.get("organization") == org
    ):
        return None
    integrity = doc.get("integrity")
    if not isinstance(integrity, dict) or type(integrity.get("seq")) is not int:
        return None
    return Link(integrity["seq"], hashlib.sha256(raw).hexdigest())
