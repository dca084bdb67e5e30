"""Memory per session and the time to be ready with 1,000,000 sessions in the table."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from typing import Any

import orjson

from bench.harness import PARTITIONS, Bench, exact_end_offsets, read_to_end, rss_bytes
from bench.workloads import event
from worker.decide import SessionState


async def ready(
    b: Bench, tag: str, app_id: str, n: int, extra: dict[str, str]
) -> tuple[float, subprocess.Popen[bytes]]:
    """Start a worker and send it one message at once: seconds from the start to the
    message's decision (its allowed record's timestamp). It is decided only once the
    worker has its partitions and their state: ready, as a user sees it."""
    t = b.topics(tag)
    began_ms = time.time() * 1000
    worker = b.start_worker(tag, interval=3600, app_id=app_id, extra=extra)
    probe = f"probe-{n}"
    await b.produce(t["inbound"], [(probe.encode(), event(probe, 0, "tok-c0"))])
    decided: list[int] = []

    def seen(m: Any) -> None:
        if orjson.loads(m.value)["sessionId"] == probe:
            decided.append(m.timestamp)

    await b.drain([t["allowed"]], n + 1, timeout=300, on=seen)
    assert len(decided) == 1, decided
    return (decided[0] - began_ms) / 1000, worker


async def state_at_scale(b: Bench, sessions: int) -> dict[str, Any]:
    """RSS per tracked session, and the time to be ready with them in the table: the first
    start (nothing on disk) and a restart, with the memory store (the default) and with
    RocksDB."""
    tag, app_id = "state", f"bench-state-{uuid.uuid4().hex[:6]}"
    t = b.topics(tag)
    await b.create([t["inbound"], t["allowed"], t["blocked"], t["audit"]])
    empty = b.start_worker(tag, interval=3600, app_id=app_id)  # creates the changelog topic
    await asyncio.sleep(2)
    base_rss = rss_bytes(empty.pid)
    b.stop_worker(empty)
    now_ms = int(time.time() * 1000)
    value = SessionState(now_ms, True, "sha256:0123456789abcdef", "user-0000000").encode()
    changelog = f"{app_id}-sessions-changelog"
    records = [(f"acme/bench/session-{i:08d}".encode(), value) for i in range(sessions)]
    started = time.monotonic()
    await b.produce(changelog, records)
    await exact_end_offsets(b, changelog)
    produce_s = time.monotonic() - started
    read_s = await read_to_end(b, changelog, sessions + PARTITIONS)
    found: dict[str, Any] = {}
    disk = {"SECURE_SESSION_STORE": "rocksdb"}
    # the memory store loads the changelog at every start; RocksDB at its first only
    for n, (name, extra) in enumerate(
        (("first_ready", {}), ("restart_ready", {}), ("first_ready_rocksdb", disk),
         ("restart_ready_rocksdb", disk))
    ):  # fmt: skip
        seconds, worker = await ready(b, tag, app_id, n, extra)
        found[f"{name}_s"] = round(seconds, 1)
        if name == "first_ready":
            await asyncio.sleep(1)
            found["rss_full_mb"] = round(rss_bytes(worker.pid) / 2**20, 1)
            found["rss_bytes_per_session"] = round((rss_bytes(worker.pid) - base_rss) / sessions, 1)
        if name == "restart_ready_rocksdb":
            found["rss_rocksdb_mb"] = round(rss_bytes(worker.pid) / 2**20, 1)
        b.stop_worker(worker)
    return found | {
        "state_sessions": sessions,
        "rss_empty_mb": round(base_rss / 2**20, 1),
        "changelog_produce_s": round(produce_s, 1),
        "changelog_read_s": round(read_s, 1),
    }
