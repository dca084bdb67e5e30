"""Read-only tools for operators, over the topics: `audit tail` and `sessions show`.

Both read with their own consumer and no group: they never move the worker's offsets.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from worker.decide import SessionState
from worker.kafka import changelog_topic, client_options, partition_for, start
from worker.settings import Settings
from worker.text import printable


@dataclass(frozen=True)
class AuditFilter:
    organization: str | None = None
    bot: str | None = None
    session: str | None = None
    reason: str | None = None
    since_ms: int | None = None

    def __call__(self, doc: dict[str, Any]) -> bool:
        return (
            (self.organization is None or doc.get("organization") == self.organization)
            and (self.bot is None or doc.get("bot") == self.bot)
            and (self.session is None or doc.get("sessionId") == self.session)
            and (self.reason is None or doc.get("reason") == self.reason)
            and (self.since_ms is None or int(doc.get("time") or 0) >= self.since_ms)
        )


def _consumer(settings: Settings) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(**client_options(settings), group_id=None, enable_auto_commit=False)


async def audit_tail(
    settings: Settings, keep: AuditFilter, follow: bool, emit: Callable[[dict[str, Any]], None]
) -> int:
    """Emit the audit events `keep` accepts: from `since_ms` (else new ones), then as they come.

    Without `follow`, returns once the topic's end is reached. Returns the count emitted.
    """
    shown = 0

    def take(m: Any) -> None:
        nonlocal shown
        try:
            doc = orjson.loads(m.value or b"")
        except orjson.JSONDecodeError:
            return  # not written by the worker
        if isinstance(doc, dict) and keep(doc):
            emit(doc)
            shown += 1

    await read_audit(settings, keep.since_ms, follow, take)
    return shown


async def read_audit(
    settings: Settings, since_ms: int | None, follow: bool, take: Callable[[Any], None]
) -> None:
    """Hand every record of the audit topic to `take` (an aiokafka message), in order per
    partition: from `since_ms` (0: the beginning; None: new ones only) to the end, and
    then as they come if `follow`."""
    consumer = _consumer(settings)
    await start(consumer)
    try:
        tps = await _partitions(consumer, settings.topics.audit)
        consumer.assign(tps)
        await _seek(consumer, tps, since_ms)
        end = await consumer.end_offsets(tps)
        while True:
            batches = await consumer.getmany(timeout_ms=500)
            for messages in batches.values():
                for m in messages:
                    take(m)
            if not follow and not batches:
                positions = [await consumer.position(tp) for tp in tps]
                if all(pos >= end[tp] for pos, tp in zip(positions, tps, strict=True)):
                    return
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    found = consumer.partitions_for_topic(topic)
    if not found:  # partitions_for_topic knows only topics in the cached metadata
        await consumer.topics()
        found = consumer.partitions_for_topic(topic)
    return [TopicPartition(topic, p) for p in sorted(found or ())]


async def _seek(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], since_ms: int | None
) -> None:
    if since_ms is None:
        await consumer.seek_to_end(*tps)
        return
    if since_ms <= 0:
        await consumer.seek_to_beginning(*tps)
        return
    try:
        found = await consumer.offsets_for_times(dict.fromkeys(tps, since_ms))
    except KafkaError:  # a broker without time lookups: read it all, the filter keeps `since`
        await consumer.seek_to_beginning(*tps)
        return
    for tp in tps:
        at = found.get(tp)
        if at is None:
            await consumer.seek_to_end(tp)
        else:
            consumer.seek(tp, at.offset)


def audit_line(doc: dict[str, Any]) -> str:
    """One audit event as a readable line."""
    at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(doc.get("time") or 0) / 1000))
    if doc.get("kind") == "config_changed":
        what = "bot" if "bot" in doc else "connector"
        by = doc.get("publisher") or {}
        digest = str(doc.get("digest") or "")
        change = f"digest {digest[:16]}" if digest else "deleted"
        return printable(
            f"{at}Z  config_changed {doc.get('organization')} {what} {doc.get(what)}  {change}"
            f"  by {by.get('user')}@{by.get('host')}"
        )
    v = doc.get("validation") or {}
    how = ""
    if v:
        status = v.get("httpStatus")
        how = f"  {v.get('type')}:{v.get('connector') or '-'}"
        how += f" {status if status is not None else '-'} {v.get('latencyMs', 0):.0f}ms"
    who = f"  identity={doc['identity']}" if doc.get("identity") else ""
    # what events and APIs sent is shown escaped: no control sequence reaches a terminal
    return printable(
        f"{at}Z  {doc.get('kind', '?'):<14} {doc.get('decision') or '-':<8} "
        f"{doc.get('reason') or '-':<26} {doc.get('organization')}/{doc.get('bot')}  "
        f"{doc.get('sessionId')}  {doc.get('messageId') or '-'}{who}{how}"
    )


@dataclass(frozen=True)
class Held:
    """What the worker holds for one session, read from the table's changelog."""

    key: str
    topic: str
    partition: int
    offset: int | None
    state: SessionState | None
    revoked: dict[str, Any] | None = None
    """The revocation in force for it (`secure-session revoke`): revokedAt, reason, key."""

    def as_dict(self) -> dict[str, Any]:
        s = self.state
        return {
            "key": self.key,
            "changelog": {"topic": self.topic, "partition": self.partition, "offset": self.offset},
            "state": None
            if s is None
            else {
                "validatedAt": s.validated_at_ms,
                "allowed": s.allowed,
                "fingerprint": s.fingerprint,
                "identity": s.identity,
                "expiresAt": s.expires_at_ms,
                "auditChain": None
                if s.chain is None
                else {"seq": s.chain.seq, "digest": s.chain.digest},
            },
            "revoked": self.revoked,
        }


async def session_state(settings: Settings, org: str, bot: str, session: str) -> Held:
    """The latest changelog record of ORG/BOT/SESSION (state None: none, or expired).

    A state is stored in the partition of the inbound record that wrote it: the session
    id's partition when the bot keys its records by session id (read first), another when
    it does not or uses another partitioner (then every other partition is read).
    """
    topic = changelog_topic(settings)
    key = f"{org}/{bot}/{session}".encode()
    consumer = _consumer(settings)
    await start(consumer)
    try:
        await consumer.topics()
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise LookupError(f"no changelog topic {topic!r}: has a worker with app id "
                              f"{settings.app_id!r} run on this cluster?")  # fmt: skip
        home = partition_for(session.encode(), len(partitions))
        found = await _latest(consumer, key, [TopicPartition(topic, home)])
        if not found:
            others = [TopicPartition(topic, p) for p in sorted(partitions) if p != home]
            found = await _latest(consumer, key, others)
    finally:
        await consumer.stop()
    held = [
        Held(key.decode(), topic, tp.partition, offset, SessionState.decode(value))
        for tp, (offset, value) in sorted(found.items())
    ]
    live = [h for h in held if h.state is not None]
    if live:  # several only when a session's records went to several partitions
        chosen = max(live, key=lambda h: h.state.validated_at_ms if h.state else 0)
    else:
        chosen = held[0] if held else Held(key.decode(), topic, home, None, None)
    identity = chosen.state.identity if chosen.state else None
    revoked = await _revocation(settings, org, bot, session, identity)
    return dataclasses.replace(chosen, revoked=revoked)


async def _revocation(
    settings: Settings, org: str, bot: str, session: str, identity: str | None
) -> dict[str, Any] | None:
    """The latest revocation record in force for this session or its identity."""
    keys = [f"{org}/{bot}/session/{session}".encode()]
    if identity is not None:
        keys.append(f"{org}/identity/{identity}".encode())
    consumer = _consumer(settings)
    await start(consumer)
    try:
        await consumer.topics()
        topic = settings.topics.revocations
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        found: dict[bytes, bytes | None] = {}
        for key in keys:
            for _offset, value in (await _latest(consumer, key, tps)).values():
                found[key] = value
    finally:
        await consumer.stop()
    best: dict[str, Any] | None = None
    for key, value in found.items():
        if value is None:
            continue
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue
        if (
            isinstance(doc, dict)
            and isinstance(doc.get("revokedAt"), int)
            and (best is None or doc["revokedAt"] > best["revokedAt"])
        ):
            best = {
                "revokedAt": doc["revokedAt"],
                "reason": doc.get("reason", ""),
                "key": key.decode(),
            }
    return best


async def _latest(
    consumer: AIOKafkaConsumer, key: bytes, tps: list[TopicPartition]
) -> dict[TopicPartition, tuple[int, bytes | None]]:
    """The last record of `key` in each of `tps` that has one (value None: a tombstone)."""
    if not tps:
        return {}
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    end = await consumer.end_offsets(tps)
    latest: dict[TopicPartition, tuple[int, bytes | None]] = {}
    pending = {tp for tp in tps if end[tp] > 0}
    while pending:
        batch = await consumer.getmany(*pending, timeout_ms=500)
        for tp, records in batch.items():
            for m in records:
                if m.key == key:
                    latest[tp] = (m.offset, m.value)
        for tp in list(pending):
            if await consumer.position(tp) >= end[tp]:
                pending.discard(tp)
    return latest
