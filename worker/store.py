"""The memory store, loaded by a plain consumer when partitions are assigned.

Faust's memory store keeps no offsets, so every newly assigned table partition is
replayed through Faust's per-record recovery path: ~75 µs of Python a record, 76 s for
1,000,000 sessions, where a plain aiokafka consumer reads the same changelog in 1.6 s
(bench). This store reads the newly assigned active partitions itself, before Faust's
recovery starts, and reports how far it read as the persisted offset: Faust's recovery
then only reads what was written after (usually nothing). Everything else (writes,
deletes, dropping partitions no longer held) is Faust's memory store unchanged.

Used for `SECURE_SESSION_STORE=memory` (the default), as `ssmemory://local`: a URL
without a host is false to yarl, and Faust would fall back to the app-wide store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import faust.stores
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from faust.stores import memory
from faust.types import TP

log = logging.getLogger(__name__)

SCHEME = "ssmemory"
LOAD_TIMEOUT_S = 120.0
"""A load that takes longer (a broker that stopped answering) is left to Faust's recovery."""
faust.stores.STORES.aliases[SCHEME] = f"{__name__}:Store"


class Store(memory.Store):  # type: ignore[type-arg]
    """options: `client` (aiokafka connection options), `source` (the inbound topic)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._loaded: dict[TP, int] = {}

    def partition_of(self, key: bytes) -> int | None:
        """The partition `key` was loaded from (None: written here since, or not held)."""
        return self._key_partition.get(key)

    def persisted_offset(self, tp: TP) -> int | None:
        """How far this rebalance's load read `tp` (None: Faust keeps its own offset)."""
        return self._loaded.get(tp)

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        await super().on_recovery_completed(active_tps, standby_tps)
        # from here Faust's recovery tracks these partitions itself; an offset kept here
        # would send the next rebalance back to it, to replay everything written since
        self._loaded.clear()

    async def on_rebalance(
        self,
        assigned: set[TP],
        revoked: set[TP],
        newly_assigned: set[TP],
        generation_id: int = 0,
    ) -> None:
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)
        options: dict[str, Any] = dict(self.options or {})
        changelog = self.table.changelog_topic.get_topic_name()
        # active partitions are the inbound ones; standbys get only the changelog
        tps = sorted(
            TP(changelog, tp.partition) for tp in newly_assigned if tp.topic == options["source"]
        )
        for tp in revoked:
            self._loaded.pop(TP(changelog, tp.partition), None)
        if not tps:
            return
        try:
            async with asyncio.timeout(LOAD_TIMEOUT_S):
                await self._load(options["client"], tps)
        except (KafkaError, OSError, TimeoutError) as exc:
            # what was read stays (replaying it again is harmless); Faust reads it all
            for tp in tps:
                self._loaded.pop(tp, None)
            log.warning(
                "table partitions not loaded (%s); Faust's recovery replays them",
                exc.__class__.__name__,
            )

    async def _load(self, client: dict[str, Any], tps: list[TP]) -> None:
        started = time.monotonic()
        consumer = AIOKafkaConsumer(**client, group_id=None, enable_auto_commit=False)
        await consumer.start()
        try:
            parts = [TopicPartition(tp.topic, tp.partition) for tp in tps]
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            end = await consumer.end_offsets(parts)
            data, key_partition = self.data, self._key_partition
            last: dict[TopicPartition, int] = {}
            pending = {p for p in parts if end[p] > 0}
            while pending:
                batch = await consumer.getmany(*pending, timeout_ms=1000, max_records=10_000)
                for p, records in batch.items():
                    for r in records:
                        if r.value is None:
                            data.pop(r.key, None)
                            key_partition.pop(r.key, None)
                        else:
                            data[r.key] = r.value
                            key_partition[r.key] = p.partition
                    last[p] = records[-1].offset
                for p in list(pending):
                    if await consumer.position(p) >= end[p]:
                        pending.discard(p)
        finally:
            await consumer.stop()
        for p, offset in last.items():
            # never past the end Faust will see: on tansu, whose end offsets are the last
            # batch's base offset + 1, a load reads past them, and Faust refuses a persisted
            # offset above its highwater (ConsistencyError: the worker would not start)
            self._loaded[TP(p.topic, p.partition)] = min(offset, end[p] - 1)
        log.info(
            "loaded %d table partitions to offsets %s in %.1f s",
            len(tps),
            {p.partition: o for p, o in sorted(last.items())},
            time.monotonic() - started,
        )
