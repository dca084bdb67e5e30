"""Memory per session and the time to be ready with 1,000,000 sessions in the table."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from bench.harness import PARTITIONS, Bench, exact_end_offsets, read_to_end, rss_bytes
from worker.decide import SessionState


async def state_at_scale(b: Bench, sessions: int) -> dict[str, Any]:
    """RSS per tracked session and the time to be ready with them in the table."""
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
    worker = b.start_worker(tag, interval=3600, app_id=app_id)
    ready_s = worker.ready_s  # type: ignore[attr-defined]
    await asyncio.sleep(1)
    full_rss = rss_bytes(worker.pid)
    b.stop_worker(worker)
    # on disk (RocksDB): the first start loads the changelog, a restart reads local state
    disk = {"SECURE_SESSION_STORE": "rocksdb"}
    first = b.start_worker(tag, interval=3600, app_id=app_id, extra=disk)
    first_s = first.ready_s  # type: ignore[attr-defined]
    b.stop_worker(first)
    again = b.start_worker(tag, interval=3600, app_id=app_id, extra=disk)
    again_s = again.ready_s  # type: ignore[attr-defined]
    disk_rss = rss_bytes(again.pid)
    b.stop_worker(again)
    return {
        "restart_ready_rocksdb_s": round(again_s, 1),
        "first_load_rocksdb_s": round(first_s, 1),
        "rss_rocksdb_mb": round(disk_rss / 2**20, 1),
        "state_sessions": sessions,
        "rss_bytes_per_session": round((full_rss - base_rss) / sessions, 1),
        "restart_ready_s": round(ready_s, 1),
        "rss_empty_mb": round(base_rss / 2**20, 1),
        "rss_full_mb": round(full_rss / 2**20, 1),
        "changelog_produce_s": round(produce_s, 1),
        "changelog_read_s": round(read_s, 1),
    }
