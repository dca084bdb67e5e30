"""Faults close together, repeated, with traffic flowing (issue 16).

Every round sends 5,000 messages over 1,000 sessions at ~2,000 msg/s to a group of three
workers and, about a second into the stream, kills one (-9), stops a second (SIGTERM)
and starts a new member, all within about a second; odd rounds also restart the killed
worker in the same second. Then, every round:

- no inbound message is missing from allowed + blocked, none is both allowed and blocked;
- per session, first decisions come out in inbound order;
- the stopped worker exited within its shutdown deadline;
- once the stream is decided, the group's committed offsets reach every partition's end.

Audit events are signed and chained (one session in ten is denied: a validation and a
block per message), and `audit verify` over the whole run's audit topic must find every
chain intact: what a crash writes again is a duplicate, never a gap.

Duplicates (the price of a kill -9) and API calls are reported per round. `make test`
runs SOAK_ROUNDS=2; `make soak` runs 20 and writes the table into docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.conftest import Broker
from tests.integration.conftest import bot, connector
from tests.integration.harness import Harness, event
from tests.soak.report import write_block

pytestmark = pytest.mark.integration

ROUNDS = int(os.environ.get("SOAK_ROUNDS", 2))
SESSIONS = 1000
MESSAGES = 5000
RATE = 2000  # messages a second
DEADLINE_S = 4.0  # SECURE_SESSION_SHUTDOWN_DEADLINE_S for these workers
SLACK_S = 2.0  # a Python process's own exit, after the deadline


@pytest.mark.timeout(120 + 90 * ROUNDS)
def test_faults_close_together_repeated(broker: Broker, tmp_path: Path) -> None:
    h = Harness(broker, tmp_path).start()
    h.extra_env["SECURE_SESSION_SHUTDOWN_DEADLINE_S"] = str(DEADLINE_S)
    h.sign_audit()
    try:
        rounds = [one_round(h, n) for n in range(ROUNDS)]
        verified = h.cli("audit", "verify")
    finally:
        h.stop()
    chains = verified.stderr.strip().splitlines()[-1] if verified.stderr.strip() else ""
    report(rounds, chains)
    problems = [line for line in verified.stdout.splitlines() if "duplicate" not in line]
    assert verified.returncode == 0 and "intact" in chains, (problems[:10], verified.stderr)
    for n, r in enumerate(rounds):
        assert r["lost"] == 0, f"round {n}: {r}"
        assert r["allowed_and_blocked"] == 0, f"round {n}: {r}"
        assert r["sessions_out_of_order"] == 0, f"round {n}: {r}"
        assert r["stop_seconds"] <= DEADLINE_S + SLACK_S, f"round {n}: {r}"
        assert r["uncommitted"] == 0, f"round {n}: {r}"
    assert not [p for p in h.logs if "Traceback" in p.read_text(errors="replace")]


def one_round(h: Harness, n: int) -> dict[str, Any]:
    for s in range(SESSIONS):
        if s % 10:  # one session in ten is denied
            h.api.tokens[f"tok-{n}-{s}"] = f"user-{s}"
    config = h.write_config([bot("secure", interval=3600)], [connector("main", h.server.url)])
    while len(h.workers) < 3:
        h.start_worker(config)
    time.sleep(3)  # the group settles
    calls_before = sum(h.api.calls.values())
    start = len(h.outputs)
    sender = h.run_async(stream(h, n))
    time.sleep(1.0)
    killed, stopped = h.workers[0], h.workers[1]
    killed.send_signal(signal.SIGKILL)
    time.sleep(0.3)
    stopped.send_signal(signal.SIGTERM)
    sigterm_at = time.monotonic()
    time.sleep(0.3)
    h.start_worker(config, wait=False)
    if n % 2:
        h.start_worker(config, wait=False)  # the killed one, back within the second
    killed.wait()
    h.workers.remove(killed)
    stop_seconds = wait_exit(stopped, sigterm_at)
    h.workers.remove(stopped)
    ends = sender.result(timeout=120)

    expected = {
        (f"r{n}s{s}", f"m{i}") for i in range(MESSAGES // SESSIONS) for s in range(SESSIONS)
    }
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        allowed, blocked = decided(h, start)
        if expected <= {k for k in allowed} | {k for k in blocked}:
            break
        time.sleep(0.5)
    lost = expected - set(allowed) - set(blocked)
    order = [s for s, ids in first_per_session(h, start).items() if ids != sorted(ids, key=_num)]
    uncommitted, behind = wait_committed(h, ends)
    return {
        "round": n,
        "lost": len(lost),
        "lost_example": sorted(lost)[:3],
        "allowed_and_blocked": len(set(allowed) & set(blocked)),
        "duplicates": sum(allowed.values()) + sum(blocked.values()) - len(expected - lost),
        "sessions_out_of_order": len(order),
        "stop_seconds": round(stop_seconds, 1),
        "uncommitted": uncommitted,
        "behind": behind,  # partition: (committed, end), where they differ
        "api_calls": sum(h.api.calls.values()) - calls_before,
    }


def _num(message_id: str) -> int:
    return int(message_id[1:])


def wait_exit(proc: subprocess.Popen[bytes], since: float) -> float:
    try:
        proc.wait(DEADLINE_S + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return float("inf")
    return time.monotonic() - since


async def stream(h: Harness, n: int) -> dict[int, int]:
    """Round n's messages at RATE; returns each partition's end offset (from the acks)."""
    producer = AIOKafkaProducer(bootstrap_servers=h.broker.bootstrap, linger_ms=2)
    await producer.start()
    ends: dict[int, int] = {}
    try:
        per_tick = RATE // 50
        futures = []
        for i in range(MESSAGES):
            s = i % SESSIONS
            ev = event(f"r{n}s{s}", f"m{i // SESSIONS}", f"tok-{n}-{s}")
            futures.append(
                await producer.send(
                    h.topics["inbound"], orjson.dumps(ev), key=ev["sessionId"].encode()
                )
            )
            if i % per_tick == per_tick - 1:
                await asyncio.sleep(0.02)
        for meta in await asyncio.gather(*futures):
            ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
    finally:
        await producer.stop()
    return ends


def decided(
    h: Harness, start: int
) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
    """How often each (session, message id) was allowed, and blocked, since `start`."""
    allowed: dict[tuple[str, str], int] = defaultdict(int)
    blocked: dict[tuple[str, str], int] = defaultdict(int)
    for o in h.outputs[start:]:
        if o.topic == "allowed":
            doc = orjson.loads(o.value)
            allowed[(doc["sessionId"], doc["id"])] += 1
        elif o.topic == "blocked" and o.doc is not None:
            blocked[(o.doc["sessionId"], o.doc["messageId"])] += 1
    return allowed, blocked


def first_per_session(h: Harness, start: int) -> dict[str, list[str]]:
    firsts: dict[str, list[str]] = defaultdict(list)
    seen: set[tuple[str, str]] = set()
    for o in h.outputs[start:]:
        if o.topic == "allowed":
            doc = orjson.loads(o.value)
            key = (doc["sessionId"], doc["id"])
        elif o.topic == "blocked" and o.doc is not None:
            key = (o.doc["sessionId"], o.doc["messageId"])
        else:
            continue
        if key not in seen:
            seen.add(key)
            firsts[key[0]].append(key[1])
    return firsts


def wait_committed(
    h: Harness, ends: dict[int, int], timeout: float = 30
) -> tuple[int, dict[int, tuple[int, int]]]:
    """Records between the group's committed offsets and the partition ends, once settled,
    and the partitions short of their end."""

    async def behind() -> dict[int, tuple[int, int]]:
        # a group member that never joins: it only reads the group's committed offsets
        reader = AIOKafkaConsumer(
            bootstrap_servers=h.broker.bootstrap, group_id=h.app_id, enable_auto_commit=False
        )
        await reader.start()
        try:
            short = {}
            for p, end in ends.items():
                committed = await reader.committed(TopicPartition(h.topics["inbound"], p))
                if (committed or 0) < end:
                    short[p] = (committed or 0, end)
            return short
        finally:
            await reader.stop()

    deadline = time.monotonic() + timeout
    while (short := h.run(behind())) and time.monotonic() < deadline:
        time.sleep(1)
    return sum(end - committed for committed, end in short.values()), short


def report(rounds: list[dict[str, Any]], chains: str) -> None:
    for r in rounds:
        print(json.dumps(r))
    print(chains)
    write_block(
        "close",
        [
            f"Last run: {time.strftime('%Y-%m-%d')}, {len(rounds)} rounds, each {MESSAGES:,} "
            f"messages over {SESSIONS:,} sessions at {RATE:,} msg/s to 3 workers; kill -9, "
            "SIGTERM and a new member within ~1 s (odd rounds: the killed worker restarted "
            f"too); shutdown deadline {DEADLINE_S:.0f} s.",
            "",
            "| round | lost | allowed and blocked | out of order | stop (s) | uncommitted | "
            "duplicates | API calls |",
            "|---|---|---|---|---|---|---|---|",
            *[
                f"| {r['round']} | {r['lost']} | {r['allowed_and_blocked']} | "
                f"{r['sessions_out_of_order']} | {r['stop_seconds']} | {r['uncommitted']} | "
                f"{r['duplicates']} | {r['api_calls']} |"
                for r in rounds
            ],
            "",
            f"`audit verify` over the run's audit topic: {chains}.",
        ],
    )
