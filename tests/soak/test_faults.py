"""Faults through a consumer group of three worker processes: kill -9, a clean stop, a
restart, in the middle of a stream of 50,000 messages over 1,000 sessions.

Checks: no inbound message is missing from allowed + blocked; per-session order of first
decisions; duplicates counted; no validated session called again after its partition
moved (the table moved with it). The figures go to docs/reliability.md when
SECURE_SESSION_UPDATE_DOCS=1 (`make soak`), and to the test's output always.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.conftest import Broker
from tests.integration.conftest import bot, connector
from tests.integration.harness import Harness, event
from tests.soak.report import write_block

pytestmark = pytest.mark.integration

SESSIONS = int(os.environ.get("SOAK_SESSIONS", 1000))
PER_SESSION = int(os.environ.get("SOAK_PER_SESSION", 10))  # make soak: 50


@pytest.mark.timeout(600)  # three workers, 51,000 messages, a rebalance after a kill -9
def test_kill_stop_restart_in_a_consumer_group(broker: Broker, tmp_path: Path) -> None:
    h = Harness(broker, tmp_path).start()
    try:
        run(h)
    finally:
        h.stop()


def run(h: Harness) -> None:
    for s in range(SESSIONS):
        h.api.tokens[f"tok-{s}"] = f"user-{s}"
    config = h.write_config([bot("secure", interval=3600)], [connector("main", h.server.url)])
    workers = [h.start_worker(config) for _ in range(3)]
    time.sleep(4)  # the group settles with three members

    # every session validated once, and its state on the changelog, before the faults
    h.send(*[event(f"s{s}", "warm", f"tok-{s}") for s in range(SESSIONS)])
    for s in range(SESSIONS):
        h.wait_decisions(f"s{s}", 1, timeout=120)
    time.sleep(2)
    calls_before = sum(h.api.calls.values())

    faults: list[str] = []
    total = SESSIONS * PER_SESSION
    started = time.monotonic()
    sender = h.run_async(stream(h, total))
    time.sleep(3)
    workers[0].send_signal(signal.SIGKILL)
    workers[0].wait()
    faults.append("kill -9 of one worker of three, mid-stream")
    time.sleep(4)
    h.stop_worker(workers[1])
    faults.append("clean stop (SIGTERM) of a second worker")
    h.start_worker(config)
    faults.append("a new worker joins")
    sender.result(timeout=300)

    ids: dict[str, list[int]] = defaultdict(list)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        ids = decided(h)
        if sum(1 for s in ids.values() for _ in set(s)) >= total + SESSIONS:
            break
        time.sleep(0.5)
    elapsed = time.monotonic() - started

    expected = {(f"s{s}", n) for s in range(SESSIONS) for n in range(PER_SESSION)}
    seen = {(s, n) for s, ns in ids.items() for n in ns if n >= 0}
    missing = expected - seen
    duplicates = sum(len(ns) - len(set(ns)) for ns in ids.values())
    out_of_order = [s for s, ns in ids.items() if first_seen(ns) != sorted(first_seen(ns))]
    recalls = sum(h.api.calls.values()) - calls_before
    result = {
        "faults": faults,
        "workers": 3,
        "sessions": SESSIONS,
        "messages": total,
        "lost": len(missing),
        "duplicated": duplicates,
        "sessions_out_of_order": len(out_of_order),
        "calls_after_faults": recalls,
        "seconds": round(elapsed, 1),
    }
    print(json.dumps(result))
    report(result)
    assert not missing, f"{len(missing)} messages lost, e.g. {sorted(missing)[:5]}"
    assert not out_of_order, f"per-session order broken in {out_of_order[:5]}"
    assert recalls == 0, f"{recalls} sessions were validated again after their partition moved"
    h.assert_clean()


async def stream(h: Harness, total: int) -> None:
    """The messages, interleaved over sessions, at a steady pace (~10 s in all)."""
    producer = AIOKafkaProducer(bootstrap_servers=h.broker.bootstrap, linger_ms=5)
    await producer.start()
    try:
        for n in range(PER_SESSION):
            for s in range(SESSIONS):
                await producer.send(
                    h.topics["inbound"],
                    orjson.dumps(event(f"s{s}", f"m{n}", f"tok-{s}")),
                    key=f"s{s}".encode(),
                )
            await producer.flush()
            await asyncio.sleep(10 / PER_SESSION)
    finally:
        await producer.stop()


def decided(h: Harness) -> dict[str, list[int]]:
    """Message numbers decided per session, in output order (warm-up as -1)."""
    ids: dict[str, list[int]] = defaultdict(list)
    for o in list(h.outputs):
        if o.topic == "allowed":
            doc = orjson.loads(o.value)
            n = doc["id"]
            ids[doc["sessionId"]].append(-1 if n == "warm" else int(n[1:]))
    return ids


def first_seen(ns: list[int]) -> list[int]:
    seen: set[int] = set()
    return [n for n in ns if not (n in seen or seen.add(n))]  # type: ignore[func-returns-value]


def report(result: dict[str, object]) -> None:
    write_block(
        "group",
        [
            f"Last run: {time.strftime('%Y-%m-%d')}, {result['workers']} worker processes, "
            f"{result['sessions']:,} sessions, {result['messages']:,} messages in "
            f"{result['seconds']} s.",
            "",
            "| fault | |",
            "|---|---|",
            *[f"| {f} | injected |" for f in result["faults"]],  # type: ignore[attr-defined]
            "",
            "| check | result |",
            "|---|---|",
            f"| messages lost (inbound id missing from allowed + blocked) | {result['lost']} |",
            f"| messages decided twice (after the kill -9) | {result['duplicated']} |",
            f"| sessions with first decisions out of order | {result['sessions_out_of_order']} |",
            f"| validations made again after partitions moved | {result['calls_after_faults']} |",
        ],
    )
