"""The memory store's own load of its table partitions (worker/store.py), with a fake
consumer: what it keeps, the offset it reports to Faust, and its fallback to Faust."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError
from faust.types import TP

from worker import store

CHANGELOG = "app-sessions-changelog"


def record(partition: int, offset: int, key: bytes, value: bytes | None) -> Any:
    return SimpleNamespace(partition=partition, offset=offset, key=key, value=value)


class FakeConsumer:
    """Serves `LOG` (changelog partition -> records) in batches of two."""

    LOG: dict[int, list[Any]] = {}
    fail = False

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.positions: dict[TopicPartition, int] = {}

    async def start(self) -> None:
        if FakeConsumer.fail:
            raise KafkaConnectionError("no broker")

    async def stop(self) -> None:
        return None

    def assign(self, parts: list[TopicPartition]) -> None:
        self.positions = dict.fromkeys(parts, 0)

    async def seek_to_beginning(self, *parts: TopicPartition) -> None:
        return None

    async def end_offsets(self, parts: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {p: len(self.LOG.get(p.partition, [])) for p in parts}

    async def getmany(self, *parts: TopicPartition, timeout_ms: int, max_records: int) -> Any:
        batch = {}
        for p in parts:
            at = self.positions[p]
            records = self.LOG.get(p.partition, [])[at : at + 2]
            if records:
                batch[p] = records
                self.positions[p] = at + len(records)
        return batch

    async def position(self, p: TopicPartition) -> int:
        return self.positions[p]


def new_store() -> store.Store:
    s = store.Store.__new__(store.Store)
    s.data, s._key_partition, s._loaded = {}, {}, {}
    s.options = {"client": {"bootstrap_servers": "x"}, "source": "inbound"}
    topic = SimpleNamespace(get_topic_name=lambda: CHANGELOG)
    s.table = SimpleNamespace(changelog_topic=topic)
    return s


@pytest.fixture(autouse=True)
def fake_consumer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "AIOKafkaConsumer", FakeConsumer)
    FakeConsumer.fail = False
    FakeConsumer.LOG = {
        0: [record(0, 0, b"a", b"1"), record(0, 1, b"b", b"2"), record(0, 2, b"a", b"3")],
        1: [record(1, 0, b"c", b"4"), record(1, 1, b"c", None)],  # written, then expired
        2: [record(2, 0, b"d", b"5")],  # a standby's: not loaded
    }


async def test_loads_the_newly_assigned_active_partitions_and_reports_how_far() -> None:
    s = new_store()
    assigned = {
        TP("inbound", 0),
        TP("inbound", 1),
        TP(CHANGELOG, 0),
        TP(CHANGELOG, 1),
        TP(CHANGELOG, 2),
    }
    await s.on_rebalance(assigned, set(), assigned)
    assert s.data == {b"a": b"3", b"b": b"2"}  # latest value wins, tombstones delete
    assert s._key_partition == {b"a": 0, b"b": 0}
    assert s.persisted_offset(TP(CHANGELOG, 0)) == 2
    assert s.persisted_offset(TP(CHANGELOG, 1)) == 1
    assert s.persisted_offset(TP(CHANGELOG, 2)) is None  # Faust replays standbys itself
    await s.on_recovery_completed({TP(CHANGELOG, 0), TP(CHANGELOG, 1)}, set())
    assert s.persisted_offset(TP(CHANGELOG, 0)) is None  # Faust tracks it from here


async def test_a_failed_load_leaves_the_partitions_to_faust() -> None:
    FakeConsumer.fail = True
    s = new_store()
    await s.on_rebalance({TP("inbound", 0)}, set(), {TP("inbound", 0)})
    assert s.persisted_offset(TP(CHANGELOG, 0)) is None and s.data == {}


async def test_reports_no_more_than_the_end_offset_the_broker_gave(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """tansu answers end offsets as the last batch's base offset + 1: a load reads the
    whole last batch, past that end. Reporting the last offset read made Faust's recovery
    refuse to start (ConsistencyError: persisted offset higher than the highwater, which
    it takes from the same wrong end), and the worker died at start. It reports at most
    end - 1 (Faust then reads nothing more) and keeps all it read."""

    async def short_end(self: FakeConsumer, parts: list[TopicPartition]) -> Any:
        return dict.fromkeys(parts, 1)  # partition 0's log is one batch of 3, from 0

    async def whole_batches(self: FakeConsumer, *parts: TopicPartition, **_: Any) -> Any:
        batch = {p: self.LOG[p.partition][self.positions[p] :] for p in parts}
        for p, records in batch.items():
            self.positions[p] += len(records)
        return {p: records for p, records in batch.items() if records}

    monkeypatch.setattr(FakeConsumer, "end_offsets", short_end)
    monkeypatch.setattr(FakeConsumer, "getmany", whole_batches)
    s = new_store()
    await s.on_rebalance({TP("inbound", 0)}, set(), {TP("inbound", 0)})
    assert s.data == {b"a": b"3", b"b": b"2"}  # the whole batch, past the wrong end
    assert s.persisted_offset(TP(CHANGELOG, 0)) == 0  # end (1) - 1, not the 2 read
